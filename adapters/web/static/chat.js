// WhisperEngine web chat: sends messages to /api/chat and renders the streamed reply.
"use strict";

(() => {
  const USER_KEY = "whisperengine.userId";
  const TOKEN_KEY = "whisperengine.apiToken";

  const els = {
    messages: document.getElementById("messages"),
    empty: document.getElementById("empty-hint"),
    form: document.getElementById("composer"),
    input: document.getElementById("message"),
    send: document.getElementById("send"),
    error: document.getElementById("error"),
    status: document.getElementById("status"),
    tokenRow: document.getElementById("token-row"),
    token: document.getElementById("token"),
    persona: document.getElementById("persona"),
  };

  let tokenRequired = false;
  let busy = false;

  function randomId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function userId() {
    let id = null;
    try {
      id = localStorage.getItem(USER_KEY);
    } catch (_) {
      /* storage disabled: a fresh id per page load */
    }
    if (!id || !/^[A-Za-z0-9_.:-]{1,128}$/.test(id)) {
      id = "web-" + randomId();
      try {
        localStorage.setItem(USER_KEY, id);
      } catch (_) {
        /* ignore */
      }
    }
    return id;
  }

  function showError(text) {
    els.error.textContent = text;
    els.error.hidden = false;
  }

  function clearError() {
    els.error.hidden = true;
    els.error.textContent = "";
  }

  function setBusy(value) {
    busy = value;
    els.send.disabled = value;
    els.form.setAttribute("aria-busy", String(value));
    els.status.textContent = value ? "The bot is replying…" : "";
  }

  function scrollToEnd() {
    els.messages.scrollTop = els.messages.scrollHeight;
  }

  function addMessage(role, text) {
    if (els.empty) {
      els.empty.remove();
      els.empty = null;
    }
    const item = document.createElement("li");
    item.className = "msg " + role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Bot";
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    item.append(who, body);
    els.messages.append(item);
    scrollToEnd();
    return { item, who, body };
  }

  function headers() {
    const h = { "Content-Type": "application/json", Accept: "application/x-ndjson, application/json" };
    const token = els.token.value.trim();
    if (token) h.Authorization = "Bearer " + token;
    return h;
  }

  async function errorText(response) {
    try {
      const data = await response.json();
      if (data && data.error && data.error.message) return data.error.message;
    } catch (_) {
      /* not JSON */
    }
    return "The server answered " + response.status + " " + response.statusText + ".";
  }

  function finish(bot, done, status) {
    if (done.persona) bot.who.textContent = done.persona.charAt(0).toUpperCase() + done.persona.slice(1);
    if (done.reply && bot.body.textContent.trim() !== done.reply.trim()) bot.body.textContent = done.reply;
    if (done.kind === "apology" || done.kind === "rate_limited" || status === 429) bot.item.classList.add("notice");
  }

  async function readStream(response, bot) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let done = null;
    bot.item.classList.add("streaming");
    bot.item.setAttribute("aria-busy", "true"); // announced once, when complete
    const handle = (line) => {
      if (!line.trim()) return;
      const event = JSON.parse(line);
      if (event.type === "chunk") {
        bot.body.textContent += event.text;
        scrollToEnd();
      } else if (event.type === "done") {
        done = event;
      } else if (event.type === "error") {
        throw new Error((event.error && event.error.message) || "The reply failed.");
      }
    };
    for (;;) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        handle(buffer.slice(0, newline));
        buffer = buffer.slice(newline + 1);
      }
    }
    handle(buffer + decoder.decode());
    bot.item.classList.remove("streaming");
    bot.item.removeAttribute("aria-busy");
    if (!done) throw new Error("The reply was cut off.");
    return done;
  }

  async function sendMessage(text) {
    clearError();
    setBusy(true);
    const mine = addMessage("user", text);
    let bot = null;
    try {
      const response = await fetch("/api/chat", {
        method: "POST",
        headers: headers(),
        body: JSON.stringify({ message: text, user_id: userId(), stream: true }),
      });
      const type = response.headers.get("Content-Type") || "";
      if (!type.startsWith("application/x-ndjson")) {
        if (response.status === 401) {
          els.tokenRow.hidden = false;
          els.token.focus();
          throw new Error("the API token is missing or wrong. Enter it above and send again.");
        }
        throw new Error(await errorText(response));
      }
      bot = addMessage("bot", "");
      const done = await readStream(response, bot);
      finish(bot, done, response.status);
    } catch (err) {
      mine.item.classList.add("failed");
      if (bot) {
        bot.item.classList.remove("streaming");
        bot.item.removeAttribute("aria-busy");
        if (!bot.body.textContent) bot.item.remove();
      }
      const reason = err instanceof TypeError ? "Could not reach the server." : err.message;
      showError("Your message was not answered: " + reason);
      if (!els.input.value) els.input.value = text;
    } finally {
      setBusy(false);
    }
  }

  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (busy) return;
    const text = els.input.value.trim();
    if (!text) return;
    els.input.value = "";
    sendMessage(text);
  });

  els.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      els.form.requestSubmit();
    }
  });

  els.token.addEventListener("input", () => {
    try {
      sessionStorage.setItem(TOKEN_KEY, els.token.value.trim());
    } catch (_) {
      /* ignore */
    }
  });

  async function loadConfig() {
    try {
      els.token.value = sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (_) {
      /* ignore */
    }
    try {
      const response = await fetch("/api/config", { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(await errorText(response));
      const config = await response.json();
      tokenRequired = Boolean(config.token_required);
      els.tokenRow.hidden = !tokenRequired;
      if (config.max_message_chars) els.input.maxLength = config.max_message_chars;
    } catch (err) {
      showError("Could not load the chat settings: " + (err.message || err));
    }
    document.body.dataset.ready = "true";
    els.input.focus();
  }

  userId();
  loadConfig();
})();
