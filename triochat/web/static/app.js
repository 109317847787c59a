// The triochat page: one WebSocket, JSON messages (docs/web.md), no framework.
// User text is only ever inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_LINES = 1000; // kept per conversation
const RETRY_FIRST = 0.5; // s before the first reconnection attempt, doubling each time
const RETRY_MOST = 30; // s between attempts, at most
const BAD_TOKEN = "That resume token is not valid";
const CANNOT_RESUME = "Cannot resume right now"; // the token may be good: keep it, retry
const KEPT = new Set(["said", "acted", "topic", "legacy"]); // what a joiner's history holds

const state = {
  socket: null,
  name: null, // registered name; null until the first registration
  password: "",
  account: "", // the registered name's own password, once the server asked for it
  wanted: null, // the name asked for, until the server accepts it
  convs: new Map(), // key ("#room" or a person's name in lower case) -> conversation
  current: null,
  switchTo: null, // a conversation to show once it exists (after /join, /msg)
  sent: [], // what was sent, for Up/Down
  recall: -1,
  retry: 0,
  timer: null,
  countdown: null, // the "reconnecting in N s" ticker
  token: null, // takes our member back after a broken connection (a secret: memory only)
  triedToken: false, // the register being answered carried the token
  leaving: false, // /quit: do not reconnect
  down: null, // why the connection is down, while reconnecting
  registering: false, // a register sent, not answered yet
};

// --- Conversations -------------------------------------------------------------

function conv(key, title, isRoom) {
  let c = state.convs.get(key);
  if (!c) {
    const el = document.createElement("div");
    c = {
      key, title, isRoom, el, unread: 0, mention: false, members: [],
      ops: new Set(), // who operates the room (kept while they are away: it is their account's)
      away: new Set(), // who is away
      seq: 0, // the last numbered event shown
      epoch: "", // the room's numbering those numbers belong to
      pending: null, // registered anew: its history, held until its epoch is known
      before: null, // ...and where it was before
      oldest: 0, // the first numbered event shown
      joining: isRoom, // until our own "joined": history, not news
      older: false, // asked for older history, not answered yet
      complete: false, // nothing older to ask for
    };
    state.convs.set(key, c);
    renderRooms();
  }
  return c;
}

function show(key) {
  const c = state.convs.get(key);
  if (!c) return;
  state.current = key;
  c.unread = 0;
  c.mention = false;
  const log = $("log");
  log.replaceChildren(c.el);
  log.scrollTop = log.scrollHeight;
  $("title").textContent = c.isRoom ? c.title : `Private: ${c.title}`;
  renderRooms();
  renderMembers();
}

function lastRoom() {
  const c = state.convs.get(state.current);
  if (c && c.isRoom) return c.key;
  for (const other of state.convs.values()) if (other.isRoom) return other.key;
  return "#lobby";
}

function renderRooms() {
  const list = $("rooms");
  const items = [];
  for (const c of state.convs.values()) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.key = c.key;
    if (c.key === state.current) button.setAttribute("aria-current", "true");
    if (c.mention) button.classList.add("mention");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = c.isRoom ? c.title : `@${c.title}`;
    button.append(label);
    if (c.unread) {
      const unread = document.createElement("span");
      unread.className = "unread";
      unread.textContent = String(c.unread);
      unread.setAttribute("aria-label", `${c.unread} unread${c.mention ? ", mentioned" : ""}`);
      button.append(unread);
    }
    button.addEventListener("click", () => {
      show(c.key);
      $("message").focus();
    });
    li.append(button);
    items.push(li);
  }
  list.replaceChildren(...items);
  const unread = [...state.convs.values()].reduce((n, c) => n + c.unread, 0);
  document.title = unread ? `(${unread}) triochat` : "triochat";
}

function renderMembers() {
  const c = state.convs.get(state.current);
  const names = c ? (c.isRoom ? c.members : [state.name, c.title]) : [];
  const ops = c && c.isRoom ? c.ops : new Set();
  const away = c && c.isRoom ? c.away : new Set();
  $("members").replaceChildren(
    ...names.map((name) => {
      const li = document.createElement("li");
      li.className = colour(name);
      li.append(span("name", name));
      if (ops.has(name)) li.append(badge("op", "operator"));
      if (away.has(name)) {
        li.classList.add("away");
        li.append(badge("away", "away"));
      }
      return li;
    }),
  );
}

// A mark in the member list; its title says it in words for a screen reader's hover.
function badge(kind, words) {
  const b = span(`badge ${kind}`, kind);
  b.title = words;
  b.setAttribute("aria-label", words);
  return b;
}

// --- Lines ---------------------------------------------------------------------

function colour(name) {
  let h = 0;
  for (const ch of name.toLowerCase()) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `c${h % 12}`;
}

function mentions(text) {
  if (!state.name) return false;
  const me = state.name.toLowerCase().replace(/[.*+?^${}()|[\]\\-]/g, "\\$&");
  return new RegExp(`(^|[^\\p{L}\\p{N}_-])${me}($|[^\\p{L}\\p{N}_-])`, "iu").test(text);
}

function stamp(ts) {
  const el = document.createElement("time");
  const when = ts === undefined ? new Date() : new Date(ts * 1000);
  el.dateTime = when.toISOString();
  el.title = when.toLocaleString();
  el.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return el;
}

function span(cls, text) {
  const el = document.createElement("span");
  el.className = cls;
  el.textContent = text;
  return el;
}

// Add a line to a conversation; counts as unread (and maybe a mention) if not shown.
function add(c, parts, cls, { ts, unread = false, mention = false, before = null } = {}) {
  const line = document.createElement("div");
  line.className = `line ${cls}`;
  line.append(stamp(ts), ...parts);
  if (mention) line.classList.add("mentioned");
  if (before) {
    c.el.insertBefore(line, before);
    return;
  }
  const log = $("log");
  const shown = c.key === state.current;
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  c.el.append(line);
  while (c.el.childElementCount > MAX_LINES) c.el.firstElementChild.remove();
  if (shown && atBottom) log.scrollTop = log.scrollHeight;
  if (unread && (!shown || document.hidden)) {
    if (!shown) {
      c.unread += 1;
      c.mention ||= mention;
      renderRooms();
    }
    if (mention && document.hidden) notify(c, parts);
  }
}

function notify(c, parts) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  const text = parts.map((p) => p.textContent).join(" ");
  new Notification(c.isRoom ? `triochat ${c.title}` : `triochat: ${c.title}`, { body: text });
}

function system(text, cls = "notice") {
  const key = state.current ?? lastRoom();
  const c = state.convs.get(key) ?? conv("#lobby", "#lobby", true);
  add(c, [span("text", text)], cls);
}

// A room event: shown once (a reconnect replays history; its seq tells what was seen).
function roomEvent(m) {
  const c = conv(m.room, m.room, true);
  if (c.pending) {
    c.pending.push(m);
    return;
  }
  if (m.type === "joined" && m.name === state.name) {
    // The server started again without its history: its numbers start again too.
    if (m.seq && m.seq <= c.seq) c.seq = m.seq - 1;
    c.joining = false;
  }
  if (m.seq) {
    // Numbered: shown once, though a reconnect replays the recent history.
    if (m.seq <= c.seq) return;
    c.seq = m.seq;
    if (!c.oldest) c.oldest = m.seq;
  }
  const live = !c.joining;
  switch (m.type) {
    case "said":
    case "acted": {
      const mine = m.name === state.name;
      const mention = !mine && mentions(m.text);
      const cls = m.type === "said" ? "said" : "acted";
      add(c, [span(`nick ${colour(m.name)}`, m.name), " ", span("text", m.text)], cls, {
        ts: m.ts,
        unread: live && !mine,
        mention: live && mention,
      });
      break;
    }
    case "joined":
      if (!c.members.includes(m.name)) c.members.push(m.name);
      add(c, [span("text", `${m.name} joined ${m.room}`)], "quiet", { ts: m.ts });
      break;
    case "left":
      c.members = c.members.filter((n) => n !== m.name);
      c.away.delete(m.name);
      add(c, [span("text", `${m.name} left ${m.room} (${m.reason})`)], "quiet", { ts: m.ts });
      break;
    case "renamed":
      c.members = c.members.map((n) => (n === m.old ? m.new : n));
      for (const marks of [c.ops, c.away]) if (marks.delete(m.old)) marks.add(m.new);
      renamePrivate(m.old, m.new);
      add(c, [span("text", `${m.old} is now known as ${m.new}`)], "quiet", { ts: m.ts });
      break;
    case "topic":
      add(c, [span("text", `${m.name} set the topic: ${m.topic}`)], "quiet", { ts: m.ts });
      break;
    case "role":
      if (m.op) c.ops.add(m.name);
      else c.ops.delete(m.name);
      add(c, [span("text", !m.by ? `${m.name} is an operator`
        : m.op ? `${m.by} made ${m.name} an operator`
        : `${m.by} took ${m.name}'s operator rights`)], "quiet", { ts: m.ts });
      break;
    case "legacy":
      add(c, [span("text", m.line)], "said", { ts: m.ts });
      break;
    case "presence":
      add(c, [span("text", `${m.joined} joined, ${m.left} left in the last ${Math.round(m.seconds)} s`)],
        "quiet", { ts: m.ts });
      break;
  }
  if (c.key === state.current && ["joined", "left", "renamed", "role"].includes(m.type)) {
    renderMembers();
  }
}

// One line for what a room's log is missing.
function gap(c, lost, why) {
  const about = lost > 0 ? `about ${lost}` : "some";
  add(c, [span("text", `${about} missed lines in ${c.key}: ${why}`)], "gap");
}

// Registered anew (our place was not kept): the room's history came again. With the
// same epoch what was shown already is left out, and unless the history reaches back
// to it, one gap line says lines were missed; with another epoch all of it is new.
function rejoined(c, m) {
  const pending = c.pending;
  const before = c.before;
  c.pending = null;
  c.before = null;
  const same = before.epoch === m.epoch;
  if (!same) c.seq = 0; // its numbers started again
  const kept = pending.filter((e) => KEPT.has(e.type) && e.seq);
  if (!same || !kept.length || kept[0].seq > before.seq) {
    gap(c, same ? m.seq - before.seq : 0, "history no longer has them");
  }
  for (const e of pending) roomEvent(e);
}

// A private conversation follows its partner's new name.
function renamePrivate(old, name) {
  const c = state.convs.get(old.toLowerCase());
  if (!c || c.isRoom || old.toLowerCase() === name.toLowerCase()) {
    if (c && !c.isRoom) c.title = name;
    return;
  }
  state.convs.delete(c.key);
  c.key = name.toLowerCase();
  c.title = name;
  state.convs.set(c.key, c);
  if (state.current === old.toLowerCase()) state.current = c.key;
  renderRooms();
  if (state.current === c.key) show(c.key);
}

// Older lines, asked for when the log is scrolled to its top: the server
// answers with the most recent N, and those before the first shown are new.
function askOlder() {
  const c = state.convs.get(state.current);
  if (!c || !c.isRoom || c.older || c.complete || !c.oldest) return;
  const count = Math.min(500, c.el.childElementCount + 50);
  if (send({ type: "history", room: c.key, count })) c.older = true;
}

function olderHistory(c, events) {
  c.older = false;
  const older = events.filter((e) => e.seq && e.seq < c.oldest);
  if (!older.length) {
    c.complete = true;
    return;
  }
  const log = $("log");
  const height = log.scrollHeight;
  const anchor = c.el.firstChild;
  for (const e of older) {
    const who = e.name ?? e.old ?? "";
    const text = e.text ?? e.line ?? e.topic ?? "";
    const cls = e.type === "acted" ? "acted" : "said";
    add(c, [span(`nick ${colour(who)}`, who), " ", span("text", text)], cls, { ts: e.ts, before: anchor });
  }
  c.oldest = older[0].seq;
  if (c.key === state.current) log.scrollTop += log.scrollHeight - height;
}

function privateMessage(m) {
  const other = m.echo ? m.to : m.from;
  const key = other.toLowerCase();
  const c = conv(key, other, false);
  add(c, [span(`nick ${colour(m.from)}`, m.from), " ", span("text", m.text)], "private", {
    ts: m.ts,
    unread: !m.echo,
    mention: !m.echo,
  });
  if (state.switchTo === key) {
    state.switchTo = null;
    show(key);
  }
}

// --- The connection ---------------------------------------------------------------

function status(text, problem = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("problem", problem);
}

function send(message) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return false;
  state.socket.send(JSON.stringify(message));
  return true;
}

function connect() {
  clearTimeout(state.timer);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/ws`);
  state.socket = socket;
  socket.addEventListener("message", (e) => receive(JSON.parse(e.data)));
  socket.addEventListener("close", (e) => closed(socket, e));
}

// Register; with a token, take our member back instead: every room resumes after the
// last number shown (if the token is no longer good, the server registers us anew).
function register() {
  const rooms = [...state.convs.values()].filter((c) => c.isRoom);
  state.registering = true;
  const message = {
    type: "register",
    name: state.name ?? state.wanted,
    password: state.password || undefined,
    account_password: state.account || undefined,
    rooms: rooms.length ? rooms.map((c) => c.key) : ["#lobby"],
  };
  state.triedToken = Boolean(state.token);
  if (state.token) {
    message.token = state.token;
    message.resume = {};
    for (const c of rooms) if (c.epoch) message.resume[c.key] = { epoch: c.epoch, seq: c.seq };
  }
  send(message);
}

function receive(m) {
  switch (m.type) {
    case "hello":
      $("password-row").hidden = !m.password;
      if (m.notice) status(m.notice, true);
      if (state.name || state.wanted) {
        if (m.password && !state.password) {
          $("login-error").textContent = "This server needs a password.";
          $("password").focus();
          state.wanted = null;
          return;
        }
        register();
      }
      break;
    case "account_password":
      // The name is registered (--db): show its password field and wait for it.
      state.registering = false;
      state.wanted = null;
      $("account-row").hidden = false;
      $("login-error").textContent = `${m.name} is registered: give its password.`;
      $("account-password").focus();
      break;
    case "registered":
      state.account = ""; // not kept once used
      $("account-password").value = "";
      state.registering = false;
      state.retry = 0;
      state.down = null;
      state.name = m.name;
      state.wanted = null;
      if (!m.resumed) {
        // A new member: each room's history comes again, then our own "joined".
        for (const c of state.convs.values()) {
          if (!c.isRoom) continue;
          c.joining = true;
          if (c.epoch) {
            c.pending = [];
            c.before = { epoch: c.epoch, seq: c.seq };
          }
        }
      }
      status(`Connected as ${m.name}`);
      $("login").hidden = true;
      $("chat").hidden = false;
      if (!state.current) state.switchTo = "#lobby";
      $("message").focus();
      break;
    case "said":
    case "acted":
    case "joined":
    case "left":
    case "renamed":
    case "topic":
    case "role":
    case "legacy":
    case "presence":
      roomEvent(m);
      if (m.type === "renamed" && m.old === state.name) {
        state.name = m.new;
        status(`Connected as ${m.new}`);
      }
      break;
    case "private":
      privateMessage(m);
      break;
    case "welcome":
      // Our new resume token (registered, or taken back): the old one is no good now.
      state.token = m.token;
      send({ type: "ack", token: m.token });
      break;
    case "room": {
      // Where a room we entered stands: its epoch, and its last number.
      const c = conv(m.room, m.room, true);
      if (c.pending) rejoined(c, m);
      c.epoch = m.epoch;
      c.seq = m.seq;
      break;
    }
    case "resumed": {
      // Every event we missed in the room has come, in order: we are up to date.
      const c = conv(m.room, m.room, true);
      c.epoch = m.epoch;
      c.seq = Math.max(c.seq, m.seq);
      break;
    }
    case "resume-failed": {
      // What we missed cannot be replayed: one line says so, and we go on from now.
      const c = conv(m.room, m.room, true);
      gap(c, m.lost, m.reason);
      c.epoch = m.epoch;
      c.seq = m.seq;
      break;
    }
    case "users": {
      const c = conv(m.room, m.room, true);
      c.members = m.names;
      c.ops = new Set(m.ops ?? []);
      c.away = new Set(m.away ?? []);
      if (m.total > m.names.length) system(`${m.room}: ${m.total} members, the first ${m.names.length} listed`);
      if (state.switchTo === m.room || !state.current) {
        state.switchTo = null;
        show(m.room);
      }
      if (c.key === state.current) renderMembers();
      break;
    }
    case "rooms":
      system(`Rooms: ${m.rooms.map((r) => `${r.room} (${r.members})`).join(", ")}`);
      break;
    case "history": {
      const c = conv(m.room, m.room, true);
      if (c.older) {
        olderHistory(c, m.events);
        break;
      }
      add(c, [span("text", `History of ${m.room}:`)], "notice");
      for (const e of m.events) {
        const who = e.name ?? e.old ?? "";
        const text = e.text ?? e.line ?? e.topic ?? "";
        add(c, [span(`nick ${colour(who)}`, who), " ", span("text", text)], e.type, { ts: e.ts });
      }
      break;
    }
    case "notice":
      system(m.text);
      break;
    case "error":
      if (m.text.startsWith(CANNOT_RESUME)) {
        // The server closes (1013) and we come back later with the same token.
        status(m.text, true);
      } else if (m.text.startsWith(BAD_TOKEN)) {
        // Our place was not kept (the grace is over, or the server restarted): the
        // server registers us anew, and each room gets its gap line.
        state.token = null;
      } else if (state.registering && state.name && state.triedToken) {
        // Registered anew, but somebody else has our name by now.
        state.registering = false;
        state.name = null;
        state.wanted = null;
        $("chat").hidden = true;
        $("login").hidden = false;
        $("login-error").textContent = m.text;
        $("name").focus();
      } else if (state.registering && state.name) {
        // Reconnecting, and the server still holds our old connection: it
        // lets go once that one fails its pings. Ask again meanwhile.
        status(`${m.text}: trying again…`, true);
        clearTimeout(state.timer);
        state.timer = setTimeout(register, 2000);
      } else if (!state.name) {
        state.registering = false;
        $("login-error").textContent = m.text;
        state.wanted = null;
        $("name").focus();
      } else {
        system(m.text, "error");
      }
      break;
  }
}

function closed(socket, e) {
  if (socket !== state.socket) return;
  state.socket = null;
  if (e.code === 4005) state.token = null; // too many bad tokens: register by name
  if (state.leaving || e.code === 1000) {
    status("You left the chat.");
    return;
  }
  if (e.code === 4001) {
    // Wrong password: ask again rather than retry with the same one.
    state.password = "";
    state.wanted = null;
    state.name = null;
    $("chat").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = e.reason || "Wrong password";
    $("password-row").hidden = false;
    $("password").focus();
    connectLater(0);
    return;
  }
  // Attempts that fail while the server is away keep the first reason shown.
  if (e.code === 1001) state.down = "Server shutting down";
  else if (!state.down || state.retry === 0) state.down = e.reason || "Connection lost";
  // Backoff: 0.5 s doubling to 30 s, each step a random 50-100 % of itself, so pages
  // that lost the same server do not all come back in the same instant.
  const step = Math.min(RETRY_MOST, RETRY_FIRST * 2 ** state.retry);
  state.retry += 1;
  connectLater(step * (0.5 + 0.5 * Math.random()) * 1000, state.down);
}

// Connect after ``delay`` ms; with ``why``, the status counts the seconds down.
function connectLater(delay, why = null) {
  clearTimeout(state.timer);
  clearInterval(state.countdown);
  const at = Date.now() + delay;
  const tick = () => {
    const left = Math.max(1, Math.ceil((at - Date.now()) / 1000));
    status(`${why}: reconnecting in ${left} s`, true);
  };
  if (why) {
    tick();
    state.countdown = setInterval(tick, 1000);
  }
  state.timer = setTimeout(() => {
    clearInterval(state.countdown);
    if (why) status(`${why}: reconnecting…`, true);
    connect();
  }, delay);
}

// --- Typing ------------------------------------------------------------------------

function submitMessage() {
  const input = $("message");
  const text = input.value;
  if (!text.trim()) return;
  const c = state.convs.get(state.current);
  let message;
  if (c && !c.isRoom && !text.startsWith("/")) {
    message = { type: "msg", to: c.title, text };
  } else {
    message = { type: "line", room: c && c.isRoom ? c.key : lastRoom(), text };
  }
  if (!send(message)) {
    status("Not connected: your message is kept, send it again once reconnected.", true);
    return;
  }
  const [verb, arg] = text.split(/\s+/, 2);
  const lower = verb.toLowerCase();
  if (lower === "/join" && arg) state.switchTo = arg.startsWith("#") ? arg.toLowerCase() : `#${arg.toLowerCase()}`;
  else if (lower === "/msg" || lower === "/whisper") state.switchTo = (arg || "").toLowerCase();
  else if ((lower === "/part" || lower === "/leave") && c && c.isRoom) leave(c.key);
  else if (lower === "/quit" || lower === "/exit") state.leaving = true;
  state.sent.push(text);
  if (state.sent.length > 100) state.sent.shift();
  state.recall = -1;
  input.value = "";
  if ("Notification" in window && Notification.permission === "default") {
    Notification.requestPermission().catch(() => {});
  }
}

function leave(key) {
  state.convs.delete(key);
  const next = state.convs.keys().next();
  state.current = null;
  if (!next.done) show(next.value);
  else {
    $("log").replaceChildren();
    renderRooms();
    renderMembers();
  }
}

function recall(step) {
  const input = $("message");
  if (!state.sent.length) return;
  if (state.recall === -1) state.recall = state.sent.length;
  state.recall = Math.max(0, Math.min(state.sent.length, state.recall + step));
  input.value = state.sent[state.recall] ?? "";
  input.setSelectionRange(input.value.length, input.value.length);
}

function cycle(step) {
  const keys = [...state.convs.keys()];
  if (!keys.length) return;
  const at = keys.indexOf(state.current);
  show(keys[(at + step + keys.length) % keys.length]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("name").value.trim();
    if (!name) return;
    $("login-error").textContent = "";
    state.wanted = name;
    state.password = $("password").value;
    state.account = $("account-password").value;
    state.leaving = false;
    if (state.socket && state.socket.readyState === WebSocket.OPEN) register();
    else connect();
  });
  $("send").addEventListener("submit", (e) => {
    e.preventDefault();
    submitMessage();
  });
  $("message").addEventListener("keydown", (e) => {
    if (e.altKey && (e.key === "ArrowUp" || e.key === "ArrowDown")) {
      e.preventDefault();
      cycle(e.key === "ArrowUp" ? -1 : 1);
    } else if (e.key === "ArrowUp") {
      e.preventDefault();
      recall(-1);
    } else if (e.key === "ArrowDown") {
      e.preventDefault();
      recall(1);
    }
  });
  // At the top of the log, scrolling (or paging) further up asks for older lines.
  $("log").addEventListener("scroll", () => {
    if ($("log").scrollTop < 40) askOlder();
  });
  $("log").addEventListener("wheel", (e) => {
    if (e.deltaY < 0 && $("log").scrollTop < 40) askOlder();
  });
  $("log").addEventListener("keydown", (e) => {
    if (["PageUp", "Home", "ArrowUp"].includes(e.key) && $("log").scrollTop < 40) askOlder();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.current) show(state.current);
  });
  connect(); // learn early whether a password is needed
});
