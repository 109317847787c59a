from triochat.cli import main

main()
