"""The review page: each answered photo beside the best photo of each of its five candidates, so that
a person can confirm one, or declare a new individual, and export the decisions as the CSV that
``data.confirmed`` reads back.

One self-contained HTML file: every thumbnail is encoded once (a query's, and each gallery photo's,
however many queries show it) into a table the page's script draws from, a page of queries at a
time, so that tens of thousands of queries stay usable. Sorting (least confident first), a filter by
species, paging; where the test truth is known, each answer is marked right or wrong.
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
                gallery_individuals: set[str]) -> list[dict]:
    """One entry per query for the page: its answers with their scores and photos, its confidence,
    species, threshold and, where known, the truth (new_individual for an individual absent from the gallery)."""
    known = {}
    if truth is not None:
        known = {i: (t if t in gallery_individuals else NEW_INDIVIDUAL) for i, t in zip(truth["image_id"], truth["individual"])}
    rows = []
    for p, best in zip(predictions.itertuples(), photos):
        answers = p.predictions.split(" ")
        scores = [float(s) for s in p.scores.split(" ")]
        rows.append({"q": p.image_id, "species": p.species, "threshold": float(p.threshold),
                     "p_new": None if pd.isna(getattr(p, "p_new", np.nan)) else float(p.p_new),
                     "confidence": float(p.margin) if np.isfinite(p.margin) else 0.0,
                     "answers": [{"id": a, "score": s, "photo": b} for a, s, b in zip(answers, scores, best)],
                     "truth": known.get(p.image_id),
                     "copy_of": (getattr(p, "copy_of", "") or None)})
    return rows


def write_review_page(out: Path, rows: list[dict], crop_paths: dict[str, str], size: int = 96, page_size: int = 25,
                      title: str = "photoid review") -> dict:
    """The page (see the module's docstring); returns its figures (queries, thumbnails, bytes)."""
    from photoid.io import atomic_path

    needed = {r["q"] for r in rows} | {a["photo"] for r in rows for a in r["answers"] if a["photo"]}
    thumbs = {image_id: thumbnail(crop_paths[image_id], size) for image_id in sorted(needed)}
    data = json.dumps({"rows": rows, "thumbs": thumbs, "pageSize": page_size, "newLabel": NEW_INDIVIDUAL},
                      separators=(",", ":")).replace("</", "<\\/")
    page = PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return {"queries": len(rows), "thumbnails": len(thumbs), "bytes": len(page.encode("utf-8"))}


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:14px system-ui,sans-serif;margin:1em;color:#222}
header{display:flex;gap:1em;align-items:center;flex-wrap:wrap;margin-bottom:1em}
.q{display:flex;gap:.6em;align-items:flex-start;border-top:1px solid #ccc;padding:.6em 0}
.card{width:110px;text-align:center;font-size:12px;overflow-wrap:anywhere}
.card img{width:96px;height:96px;object-fit:contain;background:#eee;display:block;margin:auto}
.query img{outline:3px solid #357}
.right{background:#dfd}.wrong{background:#fdd}
.chosen{outline:3px solid #2a2}
.new{width:96px;height:96px;display:flex;align-items:center;justify-content:center;background:#f4f0e0;margin:auto}
button{font-size:12px;margin-top:2px}
</style></head><body>
<header><strong>__TITLE__</strong>
<label>sort <select id="sort"><option value="asc">least confident first</option>
<option value="desc">most confident first</option><option value="name">by photo</option></select></label>
<label>species <select id="species"><option value="">all</option></select></label>
<button id="prev">&larr; page</button><span id="pageinfo"></span><button id="next">page &rarr;</button>
<button id="export">export decisions (CSV)</button><span id="count"></span></header>
<main id="list"></main>
<script>
const DATA = __DATA__;
const decisions = {};
let page = 0;
const el = (tag, attrs = {}, ...kids) => { const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) { if (k === "class") e.className = v; else e.setAttribute(k, v); }
  for (const k of kids) e.append(k); return e; };
const species = [...new Set(DATA.rows.map(r => r.species))].sort();
for (const s of species) document.getElementById("species").append(el("option", {value: s}, s));
function visible() {
  const sp = document.getElementById("species").value, order = document.getElementById("sort").value;
  const rows = DATA.rows.filter(r => !sp || r.species === sp);
  if (order === "name") rows.sort((a, b) => a.q.localeCompare(b.q));
  else rows.sort((a, b) => order === "asc" ? a.confidence - b.confidence : b.confidence - a.confidence);
  return rows; }
function card(img, caption, cls) {
  const c = el("div", {class: "card " + (cls || "")});
  c.append(img ? el("img", {src: DATA.thumbs[img], alt: img, title: img}) : el("div", {class: "new"}, "new"), caption);
  return c; }
function render() {
  const rows = visible(), pages = Math.max(1, Math.ceil(rows.length / DATA.pageSize));
  page = Math.min(page, pages - 1);
  document.getElementById("pageinfo").textContent = ` ${page + 1} / ${pages} (${rows.length} photos) `;
  document.getElementById("count").textContent = ` ${Object.keys(decisions).length} decided`;
  const list = document.getElementById("list"); list.replaceChildren();
  for (const r of rows.slice(page * DATA.pageSize, (page + 1) * DATA.pageSize)) {
    const q = el("div", {class: "q", "data-q": r.q});
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
      button.onclick = () => {
        if (isNew) { const name = prompt("Name of the new individual", "new_" + r.q.replace(/\\W+/g, "_"));
          if (!name) return; decisions[r.q] = "new:" + name; }
        else decisions[r.q] = a.id;
        render(); };
      q.append(card(isNew ? null : a.photo, el("div", {}, isNew ? "new individual" : a.id, el("br"),
        isNew ? `threshold ${a.score.toFixed(3)}` : `score ${a.score.toFixed(3)}`, el("br"), button), right + chosen)); });
    if (r.truth !== null) q.append(el("div", {class: "card"}, `truth: ${r.truth}`));
    if (r.copy_of) q.append(el("div", {class: "card"}, `exact copy of training photo ${r.copy_of}`));
    list.append(q); } }
document.getElementById("sort").onchange = () => { page = 0; render(); };
document.getElementById("species").onchange = () => { page = 0; render(); };
document.getElementById("prev").onclick = () => { page = Math.max(0, page - 1); render(); };
document.getElementById("next").onclick = () => { page += 1; render(); };
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
</script></body></html>
"""
