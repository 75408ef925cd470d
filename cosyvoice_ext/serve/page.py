"""The page at `/`: pick a voice, type a text, hear it (plain HTML and fetch(); no build step, no CDN)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cosyext serve</title>
<style>
 body { font-family: sans-serif; max-width: 40em; margin: 2em auto; }
 label { display: block; margin: .6em 0; }
 textarea, select, input { font: inherit; width: 100%; }
 #status { color: #555; min-height: 1.2em; }
</style>
</head>
<body>
<h1>cosyext serve</h1>
<label>Voice <select id="voice"></select></label>
<p id="description"></p>
<label>Text <textarea id="text" rows="3">Hello there.</textarea></label>
<label>API key (only if the server wants one) <input id="key" type="password" autocomplete="off"></label>
<button id="play" type="button">Play</button>
<p id="status"></p>
<audio id="audio" controls></audio>
<script>
const $ = (id) => document.getElementById(id);
let voices = [];
function headers() {
  const h = {"Content-Type": "application/json"};
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
  return h;
}
function say(text) { $("status").textContent = text; }
function describe() {
  const v = voices.find((x) => x.name === $("voice").value);
  $("description").textContent = v ? (v.description || "") : "";
}
async function loadVoices() {
  const r = await fetch("/v1/voices", {headers: headers()});
  if (!r.ok) { say("cannot list voices: HTTP " + r.status); return; }
  const doc = await r.json();
  voices = doc.voices.filter((v) => v.status === "ready");
  const select = $("voice");
  select.textContent = "";
  for (const v of voices) {
    const o = document.createElement("option");
    o.value = v.name;
    o.textContent = v.name;
    o.selected = v.name === doc.default_speaker;
    select.appendChild(o);
  }
  describe();
  say(voices.length + " voice(s)");
}
$("play").addEventListener("click", async () => {
  say("synthesising...");
  const r = await fetch("/v1/audio/speech", {method: "POST", headers: headers(), body: JSON.stringify(
    {model: "cosyext", input: $("text").value, voice: $("voice").value, response_format: "wav"})});
  if (!r.ok) {
    const e = await r.json().catch(() => ({}));
    say("HTTP " + r.status + ": " + ((e.error || {}).message || ""));
    return;
  }
  const a = $("audio");
  a.dataset.ended = "";
  a.src = URL.createObjectURL(await r.blob());
  try { await a.play(); say("playing"); } catch (err) { say("press play on the player (" + err + ")"); }
});
$("audio").addEventListener("ended", () => { $("audio").dataset.ended = "1"; say("played"); });
$("voice").addEventListener("change", describe);
$("key").addEventListener("change", loadVoices);
loadVoices();
</script>
</body>
</html>
"""
