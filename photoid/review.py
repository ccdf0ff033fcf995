"""The review page: each answered photo beside the best photo of each of its five candidates, so that
a person can confirm one, or declare a new individual, and export the decisions as the CSV that
``data.confirmed`` reads back.

An HTML file that opens offline, with no server: every thumbnail is encoded once (a query's, and each
gallery photo's, however many queries show it) into a table the page's script draws from, a page of
queries at a time, so that tens of thousands of queries stay usable; beside it a folder of larger
views (each photo's box region at ``report.view`` pixels, JPEG, encoded once). A click on a
candidate opens the query and that candidate's photo side by side at that size, with the keypoints
re-ranking matched between them drawn as lines (the query mirrored where its mirror image matched),
their count and P(same individual). Sorting (least confident first, nearly known first, by species),
a filter by species, paging, keyboard shortcuts; where the test truth is known, each answer is marked
right or wrong; the photos that could not be answered are listed with their reason.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from photoid.metrics import NEW_INDIVIDUAL


def best_photos(sets, flips, query_ids, answers: list[list[str]]) -> list[list[str | None]]:
    """For each query and each individual it was answered, that individual's gallery photo most
    similar to the query (the folds' similarities averaged, flips as the ranking used them)."""
    from photoid.retrieval.evaluation import test_vectors

    rows = sets[0].rows
    position = {image_id: i for i, image_id in enumerate(rows["image_id"])}
    queries, gallery, owners = test_vectors(sets, np.array([position[q] for q in query_ids], dtype=np.int64), flips)
    labels = rows["individual"].to_numpy()[owners]
    entries: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        entries.setdefault(label, []).append(i)
    image_ids = rows["image_id"].to_numpy()
    out = []
    for q, answer in zip(queries, answers):
        row = []
        for label in answer:
            idx = entries.get(label)
            row.append(None if idx is None else str(image_ids[owners[idx[int(np.argmax(gallery[idx] @ q))]]]))
        out.append(row)
    return out


def thumbnail(path: str | Path, size: int) -> str:
    """A JPEG data URI of the crop at ``path``, its longer side ``size`` pixels."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((size, size))
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def review_rows(predictions: pd.DataFrame, photos: list[list[str | None]], truth: pd.DataFrame | None,
                gallery_individuals: set[str], matches: pd.DataFrame | None = None) -> list[dict]:
    """One entry per query for the page: its answers with their scores and photos, its confidence,
    species, threshold and, where known, the truth (new_individual for an individual absent from the
    gallery). ``matches`` (:func:`photoid.retrieval.verification.answer_matches`): an answer with a
    row there shows that row's gallery photo and carries its matched keypoints, to be drawn."""
    known = {}
    if truth is not None:
        known = {i: (t if t in gallery_individuals else NEW_INDIVIDUAL) for i, t in zip(truth["image_id"], truth["individual"])}
    by_answer = {} if matches is None else {(m.image_id, m.individual): m for m in matches.itertuples()}
    rows = []
    for p, best in zip(predictions.itertuples(), photos):
        answers = p.predictions.split(" ")
        scores = [float(s) for s in p.scores.split(" ")]
        shown = []
        for a, s, b in zip(answers, scores, best):
            m = by_answer.get((p.image_id, a))
            shown.append({"id": a, "score": s, "photo": b if m is None else m.gallery_id,
                          "match": None if m is None else {"n": int(m.inliers), "mirrored": bool(m.flipped),
                                                           "qs": float(m.query_side), "gs": float(m.gallery_side),
                                                           "q": list(m.query_xy), "g": list(m.gallery_xy)}})
        rows.append({"q": p.image_id, "species": p.species, "threshold": float(p.threshold),
                     "p_new": None if pd.isna(getattr(p, "p_new", np.nan)) else float(p.p_new),
                     "confidence": float(p.margin) if np.isfinite(p.margin) else 0.0,
                     "top": float(p.top_score) if np.isfinite(p.top_score) else 0.0,
                     "answers": shown, "truth": known.get(p.image_id),
                     "copy_of": (getattr(p, "copy_of", "") or None)})
    return rows


def view_sources(images: pd.DataFrame, crops: pd.DataFrame) -> dict[str, tuple]:
    """What :func:`write_views` reads for each photo: image_id -> (path, (width, height), box region),
    from ingest's image table and the crop table (its box with the margin: the region the keypoints
    were found in)."""
    table = crops[["image_id", "crop_x1", "crop_y1", "crop_x2", "crop_y2"]].merge(
        images[["image_id", "path", "width", "height"]], on="image_id")
    return {r.image_id: (r.path, (int(r.width), int(r.height)), (r.crop_x1, r.crop_y1, r.crop_x2, r.crop_y2))
            for r in table.itertuples()}


VIEW_QUALITY = 85  # JPEG quality of the larger views. The demo's 261 views at 512 px: 13 kB each at 70,
# 18 kB at 85, 32 kB at 95; 85 keeps nicks and scars sharp at a little over half of 95's bytes


def write_views(folder: Path, sources: dict[str, tuple], side: int) -> dict[str, str]:
    """Each photo's box region (``sources``: image_id -> (path, (width, height), box), as
    :func:`photoid.crop.read_region` reads it), its longer side ``side`` pixels, as a JPEG in
    ``folder``, encoded once; returns image_id -> file name."""
    from photoid.crop import read_region
    from photoid.io import atomic_path

    names = {}
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        for n, (image_id, (path, size, box)) in enumerate(sorted(sources.items())):
            names[image_id] = f"v{n:06d}.jpg"
            read_region(path, size, box, side).save(tmp / names[image_id], quality=VIEW_QUALITY)
    return names


def write_review_page(out: Path, rows: list[dict], crop_paths: dict[str, str], size: int = 96, page_size: int = 25,
                      title: str = "photoid review", views: dict[str, tuple] | None = None, view_side: int = 512,
                      unanswered: list[dict] | None = None) -> dict:
    """The page (see the module's docstring) and, with ``views`` (image_id -> (path, (width, height),
    box): :func:`write_views`), the folder of its larger views beside it (``<page>_views/``);
    ``unanswered``: the photos that could not be answered (path or image_id, reason), listed on the
    page. Returns its figures (queries, thumbnails, views, bytes of the page and of the views)."""
    from photoid.io import atomic_path

    needed = {r["q"] for r in rows} | {a["photo"] for r in rows for a in r["answers"] if a["photo"]}
    thumbs = {image_id: thumbnail(crop_paths[image_id], size) for image_id in sorted(needed)}
    folder = out.parent / f"{out.stem}_views"
    names = write_views(folder, {i: v for i, v in views.items() if i in needed}, view_side) if views else {}
    data = json.dumps({"rows": rows, "thumbs": thumbs, "pageSize": page_size, "newLabel": NEW_INDIVIDUAL,
                       "views": {i: f"{folder.name}/{n}" for i, n in names.items()},
                       "unanswered": unanswered or []}, separators=(",", ":")).replace("</", "<\\/")
    page = PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    view_bytes = sum((folder / n).stat().st_size for n in names.values())
    return {"queries": len(rows), "thumbnails": len(thumbs), "views": len(names), "bytes": len(page.encode("utf-8")),
            "view_bytes": view_bytes, "unanswered": len(unanswered or [])}


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:14px system-ui,sans-serif;margin:1em;color:#222}
header{display:flex;gap:1em;align-items:center;flex-wrap:wrap;margin-bottom:.5em}
#keys{color:#555;font-size:12px;margin:0 0 1em}
.q{display:flex;gap:.6em;align-items:flex-start;border-top:1px solid #ccc;padding:.6em 0}
.q.focus{background:#eef4fb}
.card{width:110px;text-align:center;font-size:12px;overflow-wrap:anywhere}
.card img{width:96px;height:96px;object-fit:contain;background:#eee;display:block;margin:auto}
.card img.matchable{cursor:zoom-in}
.query img{outline:3px solid #357}
.right{background:#dfd}.wrong{background:#fdd}
.chosen{outline:3px solid #2a2}
.new{width:96px;height:96px;display:flex;align-items:center;justify-content:center;background:#f4f0e0;margin:auto}
button{font-size:12px;margin-top:2px}
#overlay{position:fixed;inset:0;background:rgba(0,0,0,.82);display:flex;flex-direction:column;align-items:center;
justify-content:center;color:#fff;z-index:9}
#overlay canvas{max-width:96vw;max-height:82vh;background:#111}
#overlay p{margin:.5em}
#unanswered li{margin:.2em 0}
</style></head><body>
<header><strong>__TITLE__</strong>
<label>sort <select id="sort"><option value="asc">least confident first</option>
<option value="nearly">nearly known first (answered new, best candidate closest)</option>
<option value="desc">most confident first</option><option value="species">by species</option>
<option value="name">by photo</option></select></label>
<label>species <select id="species"><option value="">all</option></select></label>
<button id="prev">&larr; page</button><span id="pageinfo"></span><button id="next">page &rarr;</button>
<button id="export">export decisions (CSV)</button><span id="count"></span></header>
<p id="keys">Keys: <b>j</b> / <b>k</b> next / previous photo &middot; <b>1</b> confirm its first candidate &middot;
<b>n</b> a new individual &middot; <b>m</b> its first candidate's matches &middot; <b>Esc</b> close.
Click a candidate's photo to see the matched keypoints.</p>
<main id="list"></main>
<section id="unanswered"></section>
<script>
const DATA = __DATA__;
const decisions = {};
let page = 0, focus = 0, shown = [];
const el = (tag, attrs = {}, ...kids) => { const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) { if (k === "class") e.className = v; else e.setAttribute(k, v); }
  for (const k of kids) e.append(k); return e; };
const species = [...new Set(DATA.rows.map(r => r.species))].sort();
for (const s of species) document.getElementById("species").append(el("option", {value: s}, s));
const answeredNew = r => r.answers.length > 0 && r.answers[0].id === DATA.newLabel;
function visible() {
  const sp = document.getElementById("species").value, order = document.getElementById("sort").value;
  const rows = DATA.rows.filter(r => !sp || r.species === sp);
  const byConfidence = (a, b) => a.confidence - b.confidence;
  if (order === "name") rows.sort((a, b) => a.q.localeCompare(b.q));
  else if (order === "desc") rows.sort((a, b) => b.confidence - a.confidence);
  else if (order === "species") rows.sort((a, b) => a.species.localeCompare(b.species) || byConfidence(a, b));
  else if (order === "nearly") rows.sort((a, b) => (answeredNew(b) - answeredNew(a))
    || (answeredNew(a) ? b.top - a.top : byConfidence(a, b)));
  else rows.sort(byConfidence);
  return rows; }
function card(img, caption, cls, onView) {
  const c = el("div", {class: "card " + (cls || "")});
  const image = img ? el("img", {src: DATA.thumbs[img], alt: img, title: img}) : el("div", {class: "new"}, "new");
  if (img && onView) { image.classList.add("matchable"); image.onclick = onView; }
  c.append(image, caption);
  return c; }
function loadImage(src) { return new Promise((ok, fail) => { const i = new Image(); i.onload = () => ok(i);
  i.onerror = () => fail(src); i.src = src; }); }
function closeMatch() { const o = document.getElementById("overlay"); if (o) o.remove(); }
function showMatch(r, a) {
  closeMatch();
  const m = a.match || {n: 0, mirrored: false, q: [], g: [], qs: 1, gs: 1};
  const canvas = el("canvas", {id: "match"});
  const caption = el("p", {}, `${r.q.split("/").pop()} and ${a.id} (${a.photo.split("/").pop()}): ${m.n} matched ` +
    `keypoints${m.mirrored ? ", the query mirrored" : ""}; P(same) ${a.score.toFixed(3)}`);
  const overlay = el("div", {id: "overlay"}, caption, canvas, el("p", {}, "Esc or click to close"));
  overlay.onclick = closeMatch; document.body.append(overlay);
  if (!DATA.views[r.q] || !DATA.views[a.photo]) { caption.append(" (no larger view of these photos)"); return; }
  return Promise.all([loadImage(DATA.views[r.q]), loadImage(DATA.views[a.photo])]).then(([qi, gi]) => {
    const gap = 24, fq = Math.max(qi.naturalWidth, qi.naturalHeight) / m.qs;
    const fg = Math.max(gi.naturalWidth, gi.naturalHeight) / m.gs, x0 = qi.naturalWidth + gap;
    canvas.width = x0 + gi.naturalWidth; canvas.height = Math.max(qi.naturalHeight, gi.naturalHeight);
    const ctx = canvas.getContext("2d");
    ctx.save(); if (m.mirrored) { ctx.translate(qi.naturalWidth, 0); ctx.scale(-1, 1); }
    ctx.drawImage(qi, 0, 0); ctx.restore(); ctx.drawImage(gi, x0, 0);
    const lines = [];
    for (let k = 0; k < m.n; k++) {
      const a1 = [m.q[2 * k] * fq, m.q[2 * k + 1] * fq], b1 = [x0 + m.g[2 * k] * fg, m.g[2 * k + 1] * fg];
      ctx.strokeStyle = `hsl(${(k * 47) % 360},90%,60%)`; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(...a1); ctx.lineTo(...b1); ctx.stroke();
      for (const p of [a1, b1]) { ctx.beginPath(); ctx.arc(...p, 4, 0, 2 * Math.PI); ctx.stroke(); }
      lines.push([a1, b1]); }
    canvas.dataset.lines = String(lines.length);
    window.drawnMatch = {query: r.q, individual: a.id, lines: lines, stated: m.n, viewScale: [fq, fg]};
    return window.drawnMatch; }); }
function decideFirst(r) { const a = r.answers.find(x => x.id !== DATA.newLabel); if (a) { decisions[r.q] = a.id; render(); } }
function decideNew(r) {
  const name = prompt("Name of the new individual", "new_" + r.q.replace(/\\W+/g, "_"));
  if (name) { decisions[r.q] = "new:" + name; render(); } }
function render() {
  const rows = visible(), pages = Math.max(1, Math.ceil(rows.length / DATA.pageSize));
  page = Math.min(page, pages - 1);
  document.getElementById("pageinfo").textContent = ` ${page + 1} / ${pages} (${rows.length} photos) `;
  document.getElementById("count").textContent = ` ${Object.keys(decisions).length} decided`;
  const list = document.getElementById("list"); list.replaceChildren();
  shown = rows.slice(page * DATA.pageSize, (page + 1) * DATA.pageSize);
  focus = Math.min(focus, Math.max(0, shown.length - 1));
  shown.forEach((r, i) => {
    const q = el("div", {class: "q" + (i === focus ? " focus" : ""), "data-q": r.q});
    const first = r.truth === null ? "" : (r.answers[0].id === r.truth ? " right" : " wrong");
    q.append(card(r.q, el("div", {title: r.q}, r.q.split("/").pop(), el("br"),
      `${r.species}, threshold ${r.threshold.toFixed(3)}`,
      el("br"), r.p_new === null ? "" : `P(new) ${r.p_new.toFixed(2)}`), "query" + first));
    r.answers.forEach(a => {
      const isNew = a.id === DATA.newLabel;
      const right = r.truth !== null && a.id === r.truth ? " right" : "";
      const d = decisions[r.q] || "";
      const chosen = (isNew ? d.startsWith("new:") : d === a.id) ? " chosen" : "";
      const button = el("button", {}, isNew ? "new individual" : "confirm");
      button.onclick = () => { if (isNew) decideNew(r); else { decisions[r.q] = a.id; render(); } };
      const matched = a.match ? `${a.match.n} matched keypoints` : "";
      q.append(card(isNew ? null : a.photo, el("div", {}, isNew ? "new individual" : a.id, el("br"),
        isNew ? `threshold ${a.score.toFixed(3)}` : `score ${a.score.toFixed(3)}`, el("br"), matched,
        matched ? el("br") : "", button), right + chosen, isNew ? null : () => showMatch(r, a))); });
    if (r.truth !== null) q.append(el("div", {class: "card"}, `truth: ${r.truth}`));
    if (r.copy_of) q.append(el("div", {class: "card"}, `exact copy of training photo ${r.copy_of}`));
    list.append(q); });
  const gone = DATA.unanswered, section = document.getElementById("unanswered"); section.replaceChildren();
  if (gone.length) section.append(el("h3", {}, `Not answered (${gone.length})`),
    el("ul", {}, ...gone.map(u => el("li", {}, `${u.photo}: ${u.reason}`)))); }
document.getElementById("sort").onchange = () => { page = 0; focus = 0; render(); };
document.getElementById("species").onchange = () => { page = 0; focus = 0; render(); };
document.getElementById("prev").onclick = () => { page = Math.max(0, page - 1); focus = 0; render(); };
document.getElementById("next").onclick = () => { page += 1; focus = 0; render(); };
document.addEventListener("keydown", e => {
  if (e.target.tagName === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "Escape") { closeMatch(); return; }
  const r = shown[focus]; if (!r) return;
  if (e.key === "j" || e.key === "ArrowDown") {
    if (focus + 1 < shown.length) focus += 1; else if ((page + 1) * DATA.pageSize < visible().length) { page += 1; focus = 0; }
    render(); document.querySelector(".q.focus")?.scrollIntoView({block: "nearest"}); e.preventDefault(); }
  else if (e.key === "k" || e.key === "ArrowUp") {
    if (focus > 0) focus -= 1; else if (page > 0) { page -= 1; focus = DATA.pageSize - 1; }
    render(); document.querySelector(".q.focus")?.scrollIntoView({block: "nearest"}); e.preventDefault(); }
  else if (e.key === "1") decideFirst(r);
  else if (e.key === "n") decideNew(r);
  else if (e.key === "m") { const a = r.answers.find(x => x.id !== DATA.newLabel); if (a && a.photo) showMatch(r, a); } });
function exportText() {
  const lines = ["image,individual_id"];
  for (const [q, d] of Object.entries(decisions)) lines.push(`${q},${d.startsWith("new:") ? d.slice(4) : d}`);
  return lines.join("\\n") + "\\n"; }
document.getElementById("export").onclick = () => {
  const a = el("a", {href: URL.createObjectURL(new Blob([exportText()], {type: "text/csv"})), download: "confirmed.csv"});
  document.body.append(a); a.click(); a.remove(); };
render();
if (location.hash === "#selftest") {  // bench/review_page.py: decide as a person would, show what export writes
  const rows = visible();
  const known = rows.find(r => r.answers.some(a => a.id !== DATA.newLabel));
  if (known) decisions[known.q] = known.answers.find(a => a.id !== DATA.newLabel).id;
  if (rows.length > 1) decisions[rows.find(r => r !== known).q] = "new:new_selftest";
  render();
  document.body.append(el("pre", {id: "export-preview"}, exportText())); }
if (location.hash === "#selftest-match") {  // a browser test: click the candidate with the most matches to draw
  const rows = visible();
  let r = null, a = null;
  for (const row of rows) for (const x of row.answers)
    if (x.match && x.match.n > 0 && DATA.views[row.q] && DATA.views[x.photo] && (!a || x.match.n > a.match.n)) { r = row; a = x; }
  if (r) { page = Math.floor(rows.indexOf(r) / DATA.pageSize); render(); }
  const target = a && [...document.querySelectorAll(`.q[data-q="${CSS.escape(r.q)}"] img.matchable`)]
    .find(i => i.alt === a.photo);
  if (target) target.click();
  const wait = () => { const c = document.getElementById("match");
    if (c && c.dataset.lines !== undefined) document.body.append(el("pre", {id: "match-check"}, JSON.stringify(
      {lines: Number(c.dataset.lines), stated: window.drawnMatch.stated, width: c.width, height: c.height,
       points: window.drawnMatch.lines, viewScale: window.drawnMatch.viewScale})));
    else setTimeout(wait, 50); };
  if (target) wait(); else document.body.append(el("pre", {id: "match-check"}, "none")); }
</script></body></html>
"""
