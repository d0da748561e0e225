// The console's own script. Served from this origin like every other; the pages
// carry no inline script (their CSP forbids it). Text from the server or a model
// is only ever set as textContent, never parsed as HTML.
"use strict";

(function () {
  const csrf = () => document.body.dataset.csrf || "";

  // -- charts: <canvas data-chart='{"type": ..., "labels": [...], "datasets": [...]}'>. In an
  // attribute rather than a JSON <script>: htmx drops script elements from what it swaps in.
  const palette = ["#2563eb", "#16a34a", "#db2777", "#ea580c", "#7c3aed", "#0891b2", "#ca8a04", "#475569"];

  function drawCharts(root) {
    if (typeof Chart === "undefined") return;
    root.querySelectorAll("canvas[data-chart]").forEach((canvas) => {
      const spec = JSON.parse(canvas.dataset.chart);
      const existing = Chart.getChart(canvas);
      if (existing) existing.destroy();
      spec.datasets.forEach((d, i) => {
        d.borderColor = d.backgroundColor = palette[i % palette.length];
        d.pointRadius = spec.type === "line" ? 2 : undefined;
      });
      new Chart(canvas, {
        type: spec.type || "bar",
        data: { labels: spec.labels, datasets: spec.datasets },
        options: {
          animation: false,
          responsive: true,
          maintainAspectRatio: false,
          scales: {
            x: { stacked: !!spec.stacked, title: { display: !!spec.x_title, text: spec.x_title || "" } },
            y: { stacked: !!spec.stacked, beginAtZero: true, title: { display: !!spec.y_title, text: spec.y_title || "" } },
          },
          plugins: { legend: { display: spec.datasets.length > 1 } },
        },
      });
      canvas.dataset.drawn = "true";
    });
  }

  // -- confirmations for destructive forms: <form data-confirm="...">
  document.addEventListener("submit", (event) => {
    const message = event.target.dataset && event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  }, true);

  // -- copy buttons: <button data-copy="ELEMENT-ID">
  document.addEventListener("click", (event) => {
    const id = event.target.dataset && event.target.dataset.copy;
    if (!id) return;
    const text = document.getElementById(id).textContent;
    if (navigator.clipboard) navigator.clipboard.writeText(text);
  });

  // -- the playground
  function pythonLiteral(value, indent) {
    const pad = "    ".repeat(indent + 1), end = "    ".repeat(indent);
    if (value === null || value === undefined) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (typeof value === "number") return String(value);
    if (typeof value === "string") return JSON.stringify(value);
    if (Array.isArray(value)) {
      if (!value.length) return "[]";
      return "[\n" + value.map((v) => pad + pythonLiteral(v, indent + 1)).join(",\n") + ",\n" + end + "]";
    }
    const keys = Object.keys(value);
    if (!keys.length) return "{}";
    return "{\n" + keys.map((k) => pad + JSON.stringify(k) + ": " + pythonLiteral(value[k], indent + 1)).join(",\n") + ",\n" + end + "}";
  }

  function playground() {
    const form = document.getElementById("pg-form");
    if (!form) return;
    const transcript = document.getElementById("pg-transcript");
    const input = document.getElementById("pg-input");
    const send = document.getElementById("pg-send");
    const errorBox = document.getElementById("pg-error");
    const formatSelect = document.getElementById("pg-format");
    const schemaBox = document.querySelector(".pg-schema");
    let history = [];

    const stat = (name, text) => { document.querySelector(`[data-stat="${name}"]`).textContent = text; };
    const showError = (text) => { errorBox.textContent = text; errorBox.hidden = !text; };
    const syncFormat = () => { schemaBox.hidden = formatSelect.value !== "json_schema"; };
    formatSelect.addEventListener("change", syncFormat);
    syncFormat();

    function bubble(role, text) {
      const item = document.createElement("div");
      item.className = "message " + role;
      const who = document.createElement("span");
      who.className = "role";
      who.textContent = role;
      const body = document.createElement("div");
      body.className = "content";
      body.textContent = text;
      item.append(who, body);
      transcript.append(item);
      transcript.scrollTop = transcript.scrollHeight;
      return body;
    }

    function parseJSONField(id, what) {
      const text = document.getElementById(id).value.trim();
      if (!text) return undefined;
      try { return JSON.parse(text); } catch (e) { throw new Error(`${what} is not valid JSON: ${e.message}`); }
    }

    function settings() {
      const body = { model: document.getElementById("pg-model").value };
      const temperature = document.getElementById("pg-temperature").value;
      const maxTokens = document.getElementById("pg-max-tokens").value;
      if (temperature !== "") body.temperature = Number(temperature);
      if (maxTokens !== "") body.max_tokens = Number(maxTokens);
      if (formatSelect.value === "json_object") body.response_format = { type: "json_object" };
      if (formatSelect.value === "json_schema") {
        const schema = parseJSONField("pg-schema", "The JSON schema");
        body.response_format = { type: "json_schema", json_schema: { name: "answer", schema: schema || {} } };
      }
      const tools = parseJSONField("pg-tools", "Tools");
      if (tools) body.tools = tools;
      return body;
    }

    function messages() {
      const system = document.getElementById("pg-system").value.trim();
      return (system ? [{ role: "system", content: system }] : []).concat(history);
    }

    function readImage() {
      const file = document.getElementById("pg-image").files[0];
      if (!file) return Promise.resolve(null);
      return new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result);
        reader.onerror = () => reject(new Error("the image could not be read"));
        reader.readAsDataURL(file);
      });
    }

    document.getElementById("pg-clear").addEventListener("click", () => {
      history = [];
      transcript.replaceChildren();
      showError("");
    });

    document.getElementById("pg-code").addEventListener("click", () => {
      let body;
      try { body = settings(); } catch (e) { showError(e.message); return; }
      const base = window.location.origin + "/v1";
      const msgs = messages().length ? messages() : [{ role: "user", content: "Hello!" }];
      const args = Object.assign({ model: body.model, messages: msgs }, body);
      delete args.model; delete args.messages;
      const kwargs = Object.keys(args).map((k) => `    ${k}=${pythonLiteral(args[k], 1)},`).join("\n");
      const extra = kwargs ? "\n" + kwargs : "";
      document.getElementById("pg-code-openai").textContent =
        `import os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url=${JSON.stringify(base)}, api_key=os.environ["TRAMONTANE_API_KEY"])\n` +
        `stream = client.chat.completions.create(\n    model=${JSON.stringify(body.model)},\n    messages=${pythonLiteral(msgs, 1)},${extra}\n    stream=True,\n)\n` +
        `for chunk in stream:\n    if chunk.choices:\n        print(chunk.choices[0].delta.content or "", end="")\n`;
      document.getElementById("pg-code-mistral").textContent =
        `import os\nfrom mistralai import Mistral\n\nclient = Mistral(server_url=${JSON.stringify(window.location.origin)}, api_key=os.environ["TRAMONTANE_API_KEY"])\n` +
        `stream = client.chat.stream(\n    model=${JSON.stringify(body.model)},\n    messages=${pythonLiteral(msgs, 1)},${extra}\n)\n` +
        `for event in stream:\n    print(event.data.choices[0].delta.content or "", end="")\n`;
      document.getElementById("pg-code-dialog").showModal();
    });

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showError("");
      const text = input.value.trim();
      if (!text) return;
      let body, image;
      try { body = settings(); image = await readImage(); } catch (e) { showError(e.message); return; }
      const content = image ? [{ type: "text", text: text }, { type: "image_url", image_url: { url: image } }] : text;
      history.push({ role: "user", content: content });
      const asked = bubble("user", text);
      if (image) {
        // The picture as sent (a data: URL, which the CSP's img-src allows), small.
        const thumbnail = document.createElement("img");
        thumbnail.className = "thumbnail";
        thumbnail.alt = "the attached image";
        thumbnail.src = image;
        asked.after(thumbnail);
      }
      body.messages = messages();
      input.value = "";
      send.disabled = true;
      ["prompt_tokens", "completion_tokens", "ttft", "tps", "energy"].forEach((n) => stat(n, "…"));
      const answer = bubble("assistant", "");
      answer.classList.add("streaming");
      const started = performance.now();
      let firstToken = null, lastToken = null, reply = "", toolCalls = [], usage = null;
      try {
        const response = await fetch("/playground/chat", {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf(), "Accept": "text/event-stream" },
          body: JSON.stringify(body),
          credentials: "same-origin",
        });
        if (response.status === 204 && response.headers.get("HX-Redirect")) {
          window.location = response.headers.get("HX-Redirect");
          return;
        }
        if (!response.ok) {
          let message = `HTTP ${response.status}`;
          try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
          throw new Error(message);
        }
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let name = "message", data = "";
            block.split("\n").forEach((line) => {
              if (line.startsWith("event:")) name = line.slice(6).trim();
              else if (line.startsWith("data:")) data += line.slice(5).trim();
            });
            if (!data || data === "[DONE]") continue;
            const payload = JSON.parse(data);
            if (name === "tramontane.metrics") {
              if (payload.energy_wh !== undefined) stat("energy", `${(payload.energy_wh * 1000).toFixed(3)} mWh (${payload.energy_source})`);
              else stat("energy", "not measured");
              continue;
            }
            if (payload.error) throw new Error(payload.error.message || "the stream failed");
            if (payload.usage) usage = payload.usage;
            (payload.choices || []).forEach((choice) => {
              const delta = choice.delta || {};
              if (delta.content) {
                if (firstToken === null) firstToken = performance.now();
                lastToken = performance.now();
                reply += delta.content;
                answer.textContent = reply;
                transcript.scrollTop = transcript.scrollHeight;
              }
              (delta.tool_calls || []).forEach((call) => {
                if (firstToken === null) firstToken = performance.now();
                lastToken = performance.now();
                const slot = toolCalls[call.index || 0] || (toolCalls[call.index || 0] = { id: call.id, type: "function", function: { name: "", arguments: "" } });
                if (call.function && call.function.name) slot.function.name += call.function.name;
                if (call.function && call.function.arguments) slot.function.arguments += call.function.arguments;
                answer.textContent = reply + toolCalls.map((c) => `\n[tool call] ${c.function.name}(${c.function.arguments})`).join("");
              });
            });
          }
        }
        const assistant = { role: "assistant", content: reply };
        if (toolCalls.length) assistant.tool_calls = toolCalls;
        history.push(assistant);
        // The image is in the conversation now: the next question is not sent with a second copy.
        if (image) document.getElementById("pg-image").value = "";
        if (usage) {
          stat("prompt_tokens", String(usage.prompt_tokens));
          stat("completion_tokens", String(usage.completion_tokens));
        }
        stat("ttft", firstToken === null ? "–" : `${Math.round(firstToken - started)} ms`);
        const generating = lastToken !== null && firstToken !== null ? (lastToken - firstToken) / 1000 : 0;
        const count = usage ? usage.completion_tokens : 0;
        stat("tps", generating > 0 && count > 1 ? ((count - 1) / generating).toFixed(1) : "–");
      } catch (e) {
        history.pop();
        showError(e.message);
      } finally {
        answer.classList.remove("streaming");
        send.disabled = false;
      }
    });
  }

  // -- a deployment's logs, followed over server-sent events:
  // <pre id="log-text" data-stream="URL">. The first event of each connection
  // ("tail") replaces the text, later ones append; on a reconnect the tail is sent
  // again, so nothing is shown twice. Lines are set as text, never as HTML.
  const MAX_LOG_LINES = 2000;

  function followLogs() {
    const box = document.getElementById("log-text");
    if (!box || !box.dataset.stream) return;
    const state = document.getElementById("log-state");
    const source = new EventSource(box.dataset.stream);
    const stickToEnd = () => box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const show = (text, replace) => {
      const follow = stickToEnd();
      const lines = (replace || box.dataset.fresh === "true" ? text : box.textContent + "\n" + text).split("\n");
      box.textContent = lines.slice(-MAX_LOG_LINES).join("\n");
      box.dataset.fresh = "false";
      if (follow) box.scrollTop = box.scrollHeight;
    };
    box.dataset.fresh = "true";  // the server-rendered placeholder goes with the first line
    source.addEventListener("tail", (event) => show(event.data, true));
    source.onmessage = (event) => show(event.data, false);
    source.onopen = () => { if (state) state.textContent = "following"; };
    source.onerror = () => {
      if (state) state.textContent = source.readyState === EventSource.CLOSED ? "stopped (reload to follow again)" : "reconnecting…";
    };
  }

  document.addEventListener("DOMContentLoaded", () => {
    drawCharts(document);
    playground();
    followLogs();
  });
  document.addEventListener("htmx:afterSettle", (event) => {
    drawCharts(event.target);
  });
})();
