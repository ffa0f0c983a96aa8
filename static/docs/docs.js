// Renders /api/openapi.json as a readable page with a request example for every endpoint.
// No framework and no CDN: plain DOM calls, text only (never innerHTML with spec data).
"use strict";

(function () {
  const origin = window.location.origin;
  let spec = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function resolve(schema) {
    let depth = 0;
    while (schema && schema.$ref && depth++ < 20) {
      const parts = schema.$ref.replace(/^#\//, "").split("/");
      schema = parts.reduce((obj, key) => (obj ? obj[key] : undefined), spec);
    }
    return schema || {};
  }

  function refName(schema) {
    if (schema && schema.$ref) return schema.$ref.split("/").pop();
    if (schema && schema.oneOf) return schema.oneOf.map(refName).join(" | ");
    return schema && schema.type ? String(schema.type) : "";
  }

  // An example value for a schema: its own example, else one built from its parts.
  function example(schema, depth) {
    depth = depth || 0;
    schema = resolve(schema);
    if (schema.example !== undefined) return schema.example;
    if (schema.const !== undefined) return schema.const;
    if (schema.enum) return schema.enum[0];
    if (depth > 4) return null;
    if (schema.oneOf) return example(schema.oneOf[0], depth + 1);
    if (schema.anyOf) return example(schema.anyOf[0], depth + 1);
    const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
    if (type === "object") {
      const out = {};
      for (const [name, sub] of Object.entries(schema.properties || {})) {
        if ((schema.required || []).includes(name)) out[name] = example(sub, depth + 1);
      }
      return out;
    }
    if (type === "array") return [example(schema.items || {}, depth + 1)];
    if (type === "integer" || type === "number") return schema.minimum || 1;
    if (type === "boolean") return true;
    return "string";
  }

  function securityOf(op) {
    const names = (op.security || spec.security || []).flatMap((req) => Object.keys(req));
    return names;
  }

  function curl(method, path, op) {
    const security = securityOf(op);
    const url = origin + path.replace("{user_id}", "alice");
    const lines = [`curl -sS -X ${method.toUpperCase()} '${url}'`];
    if (security.includes("apiKey")) lines.push(`  -H "Authorization: Bearer $API_KEY"`);
    if (security.includes("subscriberToken")) lines.push(`  -H "Authorization: Bearer $TOKEN"`);
    if (security.includes("metricsToken")) lines.push(`  -H "Authorization: Bearer $METRICS_TOKEN"`);
    if (op.requestBody) {
      const media = op.requestBody.content["application/json"];
      const body = example(media.schema);
      lines.push(`  -H 'Content-Type: application/json'`);
      lines.push(`  -d '${JSON.stringify(body)}'`);
    }
    if ((op.parameters || []).some((p) => p.name === "Idempotency-Key")) {
      lines.splice(lines.length - 1, 0, `  -H "Idempotency-Key: $(uuidgen)"`);
    }
    return lines.join(" \\\n");
  }

  function streamExample(path) {
    const base = origin.replace(/^http/, "ws");
    if (path === "/stream") {
      return [
        `// Browser: a token from POST /api/tokens, resumes itself via Last-Event-ID`,
        `const source = new EventSource("${origin}/stream?token=" + encodeURIComponent(token));`,
        `source.addEventListener("notification", (e) => show(JSON.parse(e.data)));`,
        `source.addEventListener("read", (e) => updateBadge(JSON.parse(e.data).unread));`,
        `source.addEventListener("reset", () => reloadHistory());`,
        ``,
        `# Shell`,
        `curl -N -H "Authorization: Bearer $TOKEN" '${origin}/stream'`,
      ].join("\n");
    }
    return [
      `const ws = new WebSocket("${base}/ws?token=" + encodeURIComponent(token) + "&last_event_id=" + lastId);`,
      `ws.onmessage = (e) => { const frame = JSON.parse(e.data); if (frame.type === "notification") show(frame.notification); };`,
      `ws.send(JSON.stringify({type: "read", ids: ["6650f0c2a1b2c3d4e5f60718"]}));`,
    ].join("\n");
  }

  // The same calls through app/client.py (retries, backoff and idempotency keys included).
  const PYTHON = {
    "post /api/notifications": [
      `from app.client import NotifyClient`,
      `notify = NotifyClient("${origin}", api_key)`,
      `note = notify.send("alice", "main is green", title="Build finished", data={"run": 42})`,
      `notes = notify.send_many(["alice", "bob"], "Deploy at 17:00")`,
    ].join("\n"),
    "get /api/users/{user_id}/notifications": `page = notify.history("alice", limit=20, unread=True)\nolder = notify.history("alice", before=page.next)`,
    "get /api/users/{user_id}/unread-count": `notify.unread_count("alice")`,
    "post /api/users/{user_id}/read": `notify.mark_read("alice", [note["id"]])  # or notify.mark_read("alice") for all`,
    "post /api/tokens": `token = notify.mint_token("alice", ttl_seconds=3600)  # token.token, token.expires_at`,
  };

  function paramsTable(params) {
    if (!params.length) return null;
    const rows = params.map((p) =>
      el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
        el("td", {}, p.required ? "required" : "optional"),
        el("td", {}, el("code", {}, JSON.stringify(resolve(p.schema))), p.description ? " " + p.description : "")));
    return el("table", {}, el("tr", {}, el("th", {}, "Parameter"), el("th", {}, "In"), el("th", {}, ""),
      el("th", {}, "Schema")), ...rows);
  }

  function responsesTable(responses) {
    const rows = Object.entries(responses).map(([code, resp]) => {
      const r = resolve(resp);
      const media = r.content ? Object.values(r.content)[0] : null;
      return el("tr", {}, el("td", {}, el("code", {}, code)), el("td", {}, r.description || ""),
        el("td", {}, media ? refName(media.schema) : ""));
    });
    return el("table", {}, el("tr", {}, el("th", {}, "Status"), el("th", {}, "Meaning"), el("th", {}, "Body")), ...rows);
  }

  function operation(path, method, op, pathParams) {
    const id = `${method}-${path}`.replace(/[^A-Za-z0-9]+/g, "-");
    const params = [...pathParams, ...(op.parameters || [])];
    const security = securityOf(op);
    const section = el("section", { class: "op", id },
      el("h2", {}, el("span", { class: `method ${method}` }, method.toUpperCase()), el("span", { class: "path" }, path)),
      el("p", {}, op.summary || ""),
      el("p", { class: "auth" }, security.length ? "Auth: " + security.join(" or ") : "No auth"));
    const table = paramsTable(params);
    if (table) section.append(table);
    if (op.requestBody) {
      const schema = op.requestBody.content["application/json"].schema;
      section.append(el("h3", {}, `Request body (${refName(schema)})`),
        el("pre", {}, JSON.stringify(example(schema), null, 2)));
    }
    section.append(el("h3", {}, "Responses"), responsesTable(op.responses || {}));
    section.append(el("h3", {}, "Example"), el("pre", { class: "example" },
      path === "/stream" || path === "/ws" ? streamExample(path) : curl(method, path, op)));
    if (PYTHON[`${method} ${path}`]) {
      section.append(el("h3", {}, "With the Python client (app/client.py)"),
        el("pre", { class: "example-python" }, PYTHON[`${method} ${path}`]));
    }
    return [id, section];
  }

  function render() {
    document.title = spec.info.title;
    document.getElementById("title").textContent = `${spec.info.title} ${spec.info.version}`;
    const content = document.getElementById("content");
    const toc = document.getElementById("toc");
    content.replaceChildren(el("p", { class: "intro" }, spec.info.description || ""));
    for (const [path, item] of Object.entries(spec.paths)) {
      for (const method of ["get", "post", "put", "patch", "delete"]) {
        if (!item[method]) continue;
        const [id, section] = operation(path, method, item[method], item.parameters || []);
        content.append(section);
        toc.append(el("a", { href: "#" + id }, `${method.toUpperCase()} ${path}`));
      }
    }
    content.append(el("h2", { id: "schemas" }, "Schemas"));
    for (const [name, schema] of Object.entries(spec.components.schemas)) {
      content.append(el("h3", {}, name), el("pre", {}, JSON.stringify(schema, null, 2)));
    }
    document.body.dataset.ready = "true";
  }

  fetch("/api/openapi.json")
    .then((resp) => {
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      return resp.json();
    })
    .then((data) => { spec = data; render(); })
    .catch((err) => {
      document.getElementById("status").textContent = `Could not load the API description: ${err.message}`;
    });
})();
