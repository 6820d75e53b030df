// Form checks the browser makes before sending (the APIs check again and their messages win),
// and the form generated from a package's options JSON schema.
import {html} from "./html.js";

// Marathon app ids: path segments of lowercase letters, digits, '-' and '.', not starting or
// ending with '-' or '.'.
const SEGMENT = /^(([a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])$/;

export function checkAppId(id) {
  const trimmed = (id || "").trim();
  if (!trimmed) return "required: an id such as /nginx or /shop/web";
  const segments = trimmed.replace(/^\//, "").split("/");
  for (const segment of segments) {
    if (!SEGMENT.test(segment)) {
      return `"${segment}" is not a valid id segment: lowercase letters, digits, '-' and '.' ` +
        "(not first or last)";
    }
  }
  return null;
}

export function checkNumber(text, {min = null, max = null, integer = false, exclusiveMin = false} = {}) {
  const value = String(text ?? "").trim();
  if (value === "") return "required";
  const number = Number(value);
  if (!Number.isFinite(number)) return `"${value}" is not a number`;
  if (integer && !Number.isInteger(number)) return `${value} is not a whole number`;
  if (min !== null && (exclusiveMin ? number <= min : number < min)) {
    return exclusiveMin ? `must be more than ${min}` : `must be at least ${min}`;
  }
  if (max !== null && number > max) return `must be at most ${max}`;
  return null;
}

// DNS label of a VIP name, as navstar's cluster/vip_labels.py makes it ("/shop/web" → "shopweb").
export function dnsLabel(name) {
  return name.toLowerCase().replace(/_/g, "-").replace(/[^a-z0-9-]/g, "");
}

export function vipName(vipLabel, port) {
  return `${dnsLabel(vipLabel)}.marathon.l4lb.thisdcos.directory:${port}`;
}

// -- options schema → form ------------------------------------------------------------------
// The values live in one nested object shaped like the options; fields are addressed by their
// JSON pointer ("/site/title"), which is also how Cosmos names a failing field.

export function defaultsOf(schema) {
  if (!schema) return undefined;
  if (schema.type === "object" || schema.properties) {
    const out = {};
    for (const [key, child] of Object.entries(schema.properties || {})) {
      const value = defaultsOf(child);
      if (value !== undefined) out[key] = value;
    }
    return out;
  }
  return schema.default;
}

function typeError(schema, value) {
  switch (schema.type) {
    case "integer":
      return Number.isInteger(value) ? null : "must be a whole number";
    case "number":
      return typeof value === "number" && Number.isFinite(value) ? null : "must be a number";
    case "boolean":
      return typeof value === "boolean" ? null : "must be true or false";
    case "string":
      return typeof value === "string" ? null : "must be text";
    default:
      return null;
  }
}

// → {pointer: message} for every failing field (an empty object when the options are valid).
export function validateOptions(schema, value, pointer = "", errors = {}) {
  if (!schema) return errors;
  if (schema.type === "object" || schema.properties) {
    const object = value && typeof value === "object" ? value : {};
    for (const key of schema.required || []) {
      const missing = object[key] === undefined || object[key] === "";
      if (missing) errors[`${pointer}/${key}`] = "required";
    }
    for (const [key, child] of Object.entries(schema.properties || {})) {
      if (object[key] !== undefined && !errors[`${pointer}/${key}`]) {
        validateOptions(child, object[key], `${pointer}/${key}`, errors);
      }
    }
    return errors;
  }
  const problem = typeError(schema, value);
  if (problem) {
    errors[pointer] = problem;
    return errors;
  }
  if (schema.enum && !schema.enum.includes(value)) errors[pointer] = `must be one of ${schema.enum.join(", ")}`;
  else if (schema.minimum !== undefined && value < schema.minimum) errors[pointer] = `must be at least ${schema.minimum}`;
  else if (schema.maximum !== undefined && value > schema.maximum) errors[pointer] = `must be at most ${schema.maximum}`;
  else if (schema.minLength !== undefined && value.length < schema.minLength) {
    errors[pointer] = `must have at least ${schema.minLength} characters`;
  } else if (schema.pattern && typeof value === "string" && !new RegExp(schema.pattern).test(value)) {
    errors[pointer] = `must match ${schema.pattern}`;
  }
  return errors;
}

export function setAt(object, pointer, value) {
  const keys = pointer.split("/").slice(1);
  const copy = structuredClone(object || {});
  let cursor = copy;
  keys.slice(0, -1).forEach((key) => {
    if (typeof cursor[key] !== "object" || cursor[key] === null) cursor[key] = {};
    cursor = cursor[key];
  });
  const last = keys[keys.length - 1];
  if (value === undefined) delete cursor[last];
  else cursor[last] = value;
  return copy;
}

function getAt(object, pointer) {
  return pointer.split("/").slice(1).reduce((cursor, key) => (cursor == null ? undefined : cursor[key]), object);
}

const fieldId = (pointer) => "opt" + pointer.replace(/[^a-zA-Z0-9]/g, "_");

// Text typed into a number field stays text until it parses, so the user sees what they typed and
// the validator names the problem.
function parseInput(schema, text) {
  if (schema.type === "integer" || schema.type === "number") {
    if (text.trim() === "") return undefined;
    const number = Number(text);
    return Number.isFinite(number) ? number : text;
  }
  return text;
}

export function SchemaFields({schema, value, errors, onChange, pointer = ""}) {
  if (!schema) return null;
  if (schema.type === "object" || schema.properties) {
    const fields = Object.entries(schema.properties || {}).map(([key, child]) =>
      html`<${SchemaFields} key=${key} schema=${child} value=${value} errors=${errors} onChange=${onChange}
                             pointer=${`${pointer}/${key}`} required=${(schema.required || []).includes(key)} />`);
    if (!pointer) return html`<div class="schema">${fields}</div>`;
    return html`<fieldset class="schema-group"><legend>${pointer.split("/").pop()}</legend>
      ${schema.description && html`<p class="hint">${schema.description}</p>`}${fields}</fieldset>`;
  }
  const id = fieldId(pointer);
  const current = getAt(value, pointer);
  const error = errors[pointer];
  const name = pointer.split("/").pop();
  const described = `${id}-hint ${error ? id + "-error" : ""}`;
  let input;
  if (schema.type === "boolean") {
    input = html`<input id=${id} type="checkbox" checked=${current === true} aria-describedby=${described}
                        onChange=${(e) => onChange(pointer, e.target.checked)} />`;
  } else if (schema.enum) {
    input = html`<select id=${id} aria-describedby=${described} aria-invalid=${error ? "true" : "false"}
                         onChange=${(e) => onChange(pointer, parseInput(schema, e.target.value))}>
      ${schema.enum.map((option) => html`<option value=${option} selected=${option === current}>${option}</option>`)}
    </select>`;
  } else {
    const numeric = schema.type === "integer" || schema.type === "number";
    input = html`<input id=${id} type="text" inputmode=${numeric ? "decimal" : "text"} value=${current ?? ""}
                        aria-describedby=${described} aria-invalid=${error ? "true" : "false"}
                        onInput=${(e) => onChange(pointer, parseInput(schema, e.target.value))} />`;
  }
  return html`<div class=${"field" + (error ? " invalid" : "")}>
    <label for=${id}>${name}${schema.type ? html` <span class="type">(${schema.type})</span>` : ""}</label>
    ${input}
    <p class="hint" id=${id + "-hint"}>${schema.description || ""}</p>
    ${error && html`<p class="error" id=${id + "-error"} role="alert">${error}</p>`}
  </div>`;
}
