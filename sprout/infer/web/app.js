// sprout chat page: plain JavaScript, no build step. Streams from /v1/chat/completions (SSE).
"use strict";

const I18N = {
  en: { newChat: "New chat", send: "Send", stop: "Stop", settings: "Settings", system: "System prompt",
        temperature: "Temperature", maxTokens: "Max tokens", thinking: "Thinking (reasoning)",
        placeholder: "Type a message… (Enter to send, Shift+Enter for a new line)",
        thought: "Thinking", toolCall: "Tool call", error: "Error", langButton: "中文",
        tokens: (n, s) => `${n} tokens in ${s} s` },
  zh: { newChat: "新对话", send: "发送", stop: "停止", settings: "设置", system: "系统提示词",
        temperature: "温度", maxTokens: "最大生成长度", thinking: "思考模式",
        placeholder: "输入消息…(Enter 发送,Shift+Enter 换行)",
        thought: "思考过程", toolCall: "工具调用", error: "错误", langButton: "English",
        tokens: (n, s) => `${n} 个词元,用时 ${s} 秒` },
};

const $ = (id) => document.getElementById(id);
let lang = localStorage.getItem("sprout-lang") || ((navigator.language || "en").startsWith("zh") ? "zh" : "en");
let history = [];        // OpenAI messages of this conversation (without the system prompt)
let controller = null;   // AbortController of the running request

function t(key) { return I18N[lang][key]; }

function applyLang() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
  $("lang").textContent = t("langButton");
  document.querySelectorAll("details > summary.thought").forEach((el) => { el.textContent = t("thought"); });
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text || "";
  div.appendChild(content);
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function thinkingBox(div) {
  let box = div.querySelector("details");
  if (!box) {
    box = document.createElement("details");          // collapsed by default
    const summary = document.createElement("summary");
    summary.className = "thought";
    summary.textContent = t("thought");
    const body = document.createElement("div");
    body.className = "thinking-text";
    box.append(summary, body);
    div.insertBefore(box, div.firstChild);
  }
  return box.querySelector(".thinking-text");
}

function showToolCall(div, call) {
  const el = document.createElement("div");
  el.className = "tool-call";
  el.textContent = `🔧 ${t("toolCall")}: ${call.function.name}(${call.function.arguments})`;
  div.appendChild(el);
}

async function loadModels() {
  try {
    const r = await fetch("/v1/models");
    const data = await r.json();
    $("model").innerHTML = "";
    for (const m of data.data || []) {
      const o = document.createElement("option");
      o.value = o.textContent = m.id;
      $("model").appendChild(o);
    }
  } catch (e) { $("status").textContent = String(e); }
}

async function send(text) {
  const user = { role: "user", content: text };
  bubble("user", text);
  const div = bubble("assistant", "");
  div.classList.add("streaming");
  const contentEl = div.querySelector(".content");
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history, user);
  const body = {
    model: $("model").value || undefined, messages, stream: true,
    temperature: parseFloat($("temperature").value),
    max_tokens: parseInt($("max-tokens").value, 10) || 256,
    chat_template_kwargs: { enable_thinking: $("thinking").checked },
    stream_options: { include_usage: true },
  };
  controller = new AbortController();
  $("send").hidden = true; $("stop").hidden = false;
  const started = performance.now();
  let answer = "", calls = [], usage = null;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body), signal: controller.signal,
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({ error: { message: r.statusText } }));
      throw new Error(err.error ? err.error.message : r.statusText);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const line = buf.slice(0, cut).trim();
        buf = buf.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const c of chunk.choices || []) {
          const d = c.delta || {};
          if (d.reasoning_content) thinkingBox(div).textContent += d.reasoning_content;
          if (d.content) { answer += d.content; contentEl.textContent = answer; }
          for (const tc of d.tool_calls || []) { calls.push(tc); showToolCall(div, tc); }
        }
        $("messages").scrollTop = $("messages").scrollHeight;
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") bubble("error", `${t("error")}: ${e.message}`);
  } finally {
    div.classList.remove("streaming");
    $("send").hidden = false; $("stop").hidden = true;
    controller = null;
  }
  const reply = { role: "assistant", content: answer };
  if (calls.length) reply.tool_calls = calls.map(({ index, ...c }) => c);
  history.push(user, reply);
  if (usage) $("status").textContent = t("tokens")(usage.completion_tokens, ((performance.now() - started) / 1000).toFixed(1));
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("new-chat").addEventListener("click", () => { history = []; $("messages").innerHTML = ""; $("status").textContent = ""; });
$("temperature").addEventListener("input", () => { $("temp-val").textContent = $("temperature").value; });
$("lang").addEventListener("click", () => {
  lang = lang === "en" ? "zh" : "en";
  localStorage.setItem("sprout-lang", lang);
  applyLang();
});

applyLang();
loadModels();
