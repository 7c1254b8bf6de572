"""Human-readable views of a ``SampleSet``: a markdown report and a self-contained static HTML feature browser.

``write_markdown_report(samples, path)``: per prefix group, the latents that fire most often, each with its
density, max activation and top contexts (activating token in bold, other active tokens with their value).

``write_browser(samples, path)``: one ``.html`` file, inline CSS/JS and data, no network. A table of latents
(group, density, max activation, decoder redundancy; filter by group / number, sort by any column); clicking a
latent shows its top contexts with every token shaded by the latent's activation (hover for the value).
Contexts are embedded for up to ``max_latents`` latents (a seeded sample of the live latents of each group,
proportional to group size, plus the ones the markdown report shows) to keep the file small; the others are
listed with their statistics only.
"""

# ruff: noqa: E501  (the page's inline JavaScript is kept as written; Python lines are formatted)
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from .samples import SampleSet


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _md_escape(s: str) -> str:
    s = s.replace("\n", "⏎").replace("\r", "")
    for ch in "\\`*_|<>[]#":
        s = s.replace(ch, "\\" + ch)
    return s


def top_latents_per_group(samples: SampleSet, per_group: int = 5, dense_threshold: float = 0.1) -> list[list[int]]:
    """For each prefix group, its ``per_group`` most frequently firing latents that are live and not dense
    (density <= ``dense_threshold``; dense latents are listed separately by the report)."""
    out = []
    dens = samples.density()
    starts = [0] + samples.ends[:-1]
    for a, b in zip(starts, samples.ends):
        ok = [i for i in range(a, b) if 0 < float(dens[i]) <= dense_threshold]
        ok.sort(key=lambda i: (-int(samples.fire_count[i]), i))  # stable: count descending, then index
        out.append(ok[:per_group])
    return out


def markdown_report(
    samples: SampleSet, per_group: int = 5, contexts_per_latent: int = 3, dense_threshold: float = 0.1
) -> str:
    """The markdown text of ``write_markdown_report``."""
    vocab = samples.vocab()
    dens, mx = samples.density(), samples.max_activation()
    name = samples.meta.get("name", "transcoder")
    site = samples.meta.get("sites", {})
    lines = [
        f"# Activation samples: {name}",
        "",
        f"- tokens scanned: {samples.n_tokens} (BOS/pad excluded); top {samples.top_n} contexts kept per latent; "
        f"window {samples.window[0]} tokens before, {samples.window[1]} after",
    ]
    if site:
        lines.append(f"- sites: `{site.get('input_hook')}` -> `{site.get('output_hook')}`")
    lines += [
        f"- live latents: {int((samples.fire_count > 0).sum())} of {samples.num_latents}; "
        f"dense (fire on > {dense_threshold:.0%} of tokens): {int((dens > dense_threshold).sum())}",
        f"- per prefix group: the {per_group} most frequently firing latents that are not dense. **Bold**: the "
        "activating token and its activation; [x]: other window tokens where the latent is >= 25 % of that",
        "",
    ]
    red = samples.stats.get("decoder_max_cos")
    starts = [0] + samples.ends[:-1]
    for g, lats in enumerate(top_latents_per_group(samples, per_group, dense_threshold)):
        a, b = starts[g], samples.ends[g]
        live = int((samples.fire_count[a:b] > 0).sum())
        dense = [i for i in range(a, b) if float(dens[i]) > dense_threshold]
        lines += [f"## Group {g + 1}: latents {a}–{b - 1} ({live} live of {b - a})", ""]
        if dense:
            shown = ", ".join(str(i) for i in dense[:20]) + (" …" if len(dense) > 20 else "")
            lines += [f"Dense latents in this group ({len(dense)}): {shown}", ""]
        if not lats:
            lines += ["_No live, non-dense latent in this group._", ""]
            continue
        for f in lats:
            extra = f", decoder max cos {_fmt(float(red[f]))}" if red is not None else ""
            lines.append(f"### Latent {f} — density {_fmt(float(dens[f]))}, max activation {_fmt(float(mx[f]))}{extra}")
            lines.append("")
            for c in samples.contexts(f, vocab)[:contexts_per_latent]:
                parts = []
                for i, (tok, act) in enumerate(zip(c["tokens"], c["acts"])):
                    t = _md_escape(str(tok))
                    if i == c["center"]:
                        parts.append(f"**{t}**\u200b[{_fmt(act)}]")
                    elif act >= 0.25 * c["value"]:
                        parts.append(f"{t}[{_fmt(act)}]")
                    else:
                        parts.append(t)
                lines.append(f"- ({_fmt(c['value'])}) " + "".join(parts))
            lines.append("")
    return "\n".join(lines) + "\n"


def write_markdown_report(
    samples: SampleSet, path: str, per_group: int = 5, contexts_per_latent: int = 3, dense_threshold: float = 0.1
) -> str:
    """Write ``markdown_report`` to ``path``; returns it."""
    with open(path, "w") as fh:
        fh.write(markdown_report(samples, per_group, contexts_per_latent, dense_threshold))
    return path


# ------------------------------------------------------------------------------------------------ HTML
def choose_browser_latents(samples: SampleSet, max_latents: int = 2000, seed: int = 0) -> list[int]:
    """Latents whose contexts go into the page: the report's top latents + a seeded per-group sample of live ones."""
    gen = torch.Generator().manual_seed(seed)
    live = (samples.fire_count > 0).nonzero().squeeze(1)
    chosen = {f for lats in top_latents_per_group(samples) for f in lats}
    if live.numel() <= max_latents:
        return sorted(set(live.tolist()))
    budget = max(0, max_latents - len(chosen))
    starts = [0] + samples.ends[:-1]
    n_live = live.numel()
    for a, b in zip(starts, samples.ends):
        grp = live[(live >= a) & (live < b)]
        quota = min(grp.numel(), round(budget * grp.numel() / n_live))
        if quota:
            chosen.update(grp[torch.randperm(grp.numel(), generator=gen)[:quota]].tolist())
    return sorted(chosen)


@dataclass
class PageExtras:
    """Optional latent-page content (``interp`` fills it; ``samples`` alone leaves it empty).

    hist [F, bins] counts of nonzero activations in equal-width bins of [0, hist_max[f]]; dla: (top ids, top
    effects, bottom ids, bottom effects), each [F, n]; quantiles: {latent: intervals} from
    ``pages.quantile_contexts``; hierarchy: a ``hierarchy.Hierarchy``; absorption: ``AbsorptionResult.to_dict()``;
    vocab: strings of token ids the DLA lists and quantile contexts use.
    """

    hist: torch.Tensor | None = None
    hist_max: torch.Tensor | None = None
    dla: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    quantiles: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    hierarchy: Any = None
    absorption: dict[str, Any] | None = None
    vocab: dict[int, str] = field(default_factory=dict)


def _r(t: torch.Tensor, digits: int = 3) -> list:
    return [[float(f"{v:.{digits}g}") for v in row] for row in t.tolist()]


def _extras_data(samples: SampleSet, extras: PageExtras, chosen: list[int], used_ids: set[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if extras.hist is not None:
        out["hist"] = extras.hist.tolist()
        out["hist_max"] = [float(f"{v:.4g}") for v in extras.hist_max.tolist()]
    if extras.dla is not None:
        ti, tv, bi, bv = extras.dla
        out["dla"] = {"pos": ti.tolist(), "posv": _r(tv), "neg": bi.tolist(), "negv": _r(bv)}
        used_ids.update(ti.reshape(-1).tolist())
        used_ids.update(bi.reshape(-1).tolist())
    if extras.quantiles:
        keep = set(chosen)
        q = {}
        for f, ivs in extras.quantiles.items():
            if f not in keep:
                continue
            q[str(f)] = [
                [
                    round(iv["lo"], 4),
                    round(iv["hi"], 4),
                    [[round(v, 4), ids, acts, c] for v, ids, acts, c in iv["contexts"]],
                ]
                for iv in ivs
            ]
            for iv in ivs:
                for _, ids, _, _ in iv["contexts"]:
                    used_ids.update(ids)
        out["quant"] = q
    h = extras.hierarchy
    if h is not None:
        out["hier"] = {
            "parent": h.parent.tolist(),
            "pp": [round(v, 3) for v in h.p_parent.tolist()],
            "pc": [round(v, 3) for v in h.p_child.tolist()],
            "cos": [None if v != v else round(v, 3) for v in h.parent_cos.tolist()],
            "lift": [float(f"{v:.3g}") for v in h.lift.tolist()],
            "groups": [
                {k: (None if isinstance(v, float) and v != v else v) for k, v in g.items()} for g in h.group_summary()
            ],
        }
    if extras.absorption is not None:
        out["absorption"] = extras.absorption
    return out


def browser_data(
    samples: SampleSet, max_latents: int = 2000, contexts_per_latent: int = 10, extras: PageExtras | None = None
) -> dict[str, Any]:
    """The JSON the page embeds (columns for the latent table, contexts for the chosen latents, page extras)."""
    vocab = {**(extras.vocab if extras else {}), **samples.vocab()}
    dens, mx = samples.density(), samples.max_activation()
    groups = samples.group_of()
    chosen = choose_browser_latents(samples, max_latents)
    contexts: dict[str, list] = {}
    used_ids: set[int] = set()
    for f in chosen:
        rows = []
        for c in samples.contexts(f, vocab)[:contexts_per_latent]:
            rows.append([round(c["value"], 5), c["token_ids"], [round(a, 4) for a in c["acts"]], c["center"]])
            used_ids.update(c["token_ids"])
        contexts[str(f)] = rows
    has = torch.zeros(samples.num_latents, dtype=torch.bool)
    if chosen:
        has[torch.tensor(chosen)] = True
    red = samples.stats.get("decoder_max_cos")
    coact = samples.stats.get("coact_max_jaccard")
    extra = _extras_data(samples, extras, chosen, used_ids) if extras is not None else {}
    return {
        "extras": extra,
        "name": samples.meta.get("name", "transcoder"),
        "sites": samples.meta.get("sites", {}),
        "n_tokens": samples.n_tokens,
        "window": list(samples.window),
        "ends": samples.ends,
        "vocab": {str(i): vocab.get(i, f"<{i}>") for i in sorted(used_ids)},
        "latents": {
            "density": [float(f"{d:.4g}") for d in dens.tolist()],
            "max": [float(f"{m:.4g}") for m in mx.tolist()],
            "group": groups.tolist(),
            "has": has.int().tolist(),
            "dec_cos": [round(v, 3) for v in red.tolist()] if red is not None else None,
            "coact": ([round(v, 3) for v in coact.tolist()] if coact is not None else None),
        },
        "contexts": contexts,
    }


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:10px 16px;background:#263238;color:#eceff1}
header h1{font-size:18px;margin:0 0 4px 0} header div{font-size:13px;opacity:.85}
#main{display:flex;height:calc(100vh - 70px)}
#list-panel{width:430px;min-width:330px;border-right:1px solid #ccc;display:flex;flex-direction:column;background:#fff}
.controls{padding:8px;display:flex;flex-wrap:wrap;gap:6px;font-size:13px;border-bottom:1px solid #eee}
.controls input[type=text]{width:90px}
#table-wrap{overflow:auto;flex:1}
table{border-collapse:collapse;width:100%;font-size:12px}
th{position:sticky;top:0;background:#eceff1;cursor:pointer;text-align:right;padding:4px 6px;user-select:none}
td{padding:3px 6px;text-align:right;border-bottom:1px solid #f0f0f0;font-variant-numeric:tabular-nums}
tr.latent-row{cursor:pointer} tr.latent-row:hover{background:#e3f2fd} tr.selected{background:#bbdefb!important}
tr.noctx td{color:#999}
#more{margin:6px}
#detail{flex:1;overflow:auto;padding:12px 18px}
#detail h2{margin:0 0 6px 0;font-size:17px} #detail-stats{font-size:13px;color:#555;margin-bottom:10px}
.context{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;line-height:1.9;
  padding:4px 8px;margin:4px 0;background:#fff;border:1px solid #e0e0e0;border-radius:4px;white-space:pre-wrap}
.context .val{color:#777;font-size:11px;margin-right:8px}
.tok{white-space:pre;border-radius:2px;padding:1px 0}
.tok.center{outline:2px solid #d84315;outline-offset:0}
.tok.nl{color:#999}
#summary-btn{float:right} a.lat{color:#1565c0;text-decoration:none;font-variant-numeric:tabular-nums} a.lat:hover{text-decoration:underline}
#nav{font-size:13px;margin-bottom:8px} #nav .sub{color:#555;margin-top:4px} #nav ul{margin:4px 0;padding-left:18px}
#nav li .context{display:inline-block;margin:1px 0 1px 6px;padding:0 4px;line-height:1.5} .meta{color:#666;font-size:12px}
h3{font-size:14px;margin:12px 0 4px 0}
.hist-wrap{display:flex;gap:4px} .hist-axis{display:flex;flex-direction:column;justify-content:space-between;font-size:10px;color:#666}
.histogram{display:flex;align-items:flex-end;gap:1px;width:380px;border-left:1px solid #999;border-bottom:1px solid #999}
.histogram .bar{flex:1;background:#ef6c00} .hist-x{display:flex;justify-content:space-between;width:380px;margin-left:28px;font-size:10px;color:#666} .dla-wrap{display:flex;gap:24px}
.dla-wrap table{width:auto} .dla-wrap td.tok{font-family:ui-monospace,Menlo,Consolas,monospace;text-align:left}
.interval{font-size:12px;color:#555;margin-top:8px} table.summary{width:auto;margin-bottom:10px}
table.summary td{text-align:right} table.summary th{position:static}
"""

_JS = r"""
(function(){
const D = JSON.parse(document.getElementById('data').textContent);
const L = D.latents, F = L.density.length, X = D.extras || {};
const $ = id => document.getElementById(id);
let order = [], shown = 0, selected = -1;
const PAGE = 300;
const kids = {};
if(X.hier){ X.hier.parent.forEach((p,c)=>{ if(p>=0){ (kids[p] = kids[p] || []).push(c); } });
  for(const p in kids) kids[p].sort((a,b)=> (X.hier.pp[b]-X.hier.pp[a]) || (a-b)); }
function fmt(v){ if(v===null||v===undefined) return '–'; if(v===0) return '0';
  const a=Math.abs(v); return (a>=1e4||a<1e-3)? v.toExponential(2) : v.toPrecision(3); }
function tokText(id){ const s = D.vocab[String(id)]; return s===undefined ? '<'+id+'>' : s; }
function el(tag, cls, text){ const e=document.createElement(tag); if(cls) e.className=cls;
  if(text!==undefined) e.textContent=text; return e; }
function latLink(f, text){ const a=el('a','lat', text===undefined? String(f) : text); a.href='#'; a.dataset.latent=f; return a; }
document.addEventListener('click', e=>{ const a = e.target.closest ? e.target.closest('a.lat') : null;
  if(a){ e.preventDefault(); show(+a.dataset.latent); } });
function build(){
  const g = $('group').value, q = $('search').value.trim(), only = $('onlyctx').checked, key = $('sort').value;
  order = [];
  for(let f=0; f<F; f++){
    if(g!=='all' && L.group[f]!==+g) continue;
    if(only && !L.has[f]) continue;
    if(q!=='' && String(f).indexOf(q)!==0) continue;
    order.push(f);
  }
  const col = key==='index'? null : (key==='dec_cos'? L.dec_cos : key==='coact'? L.coact : L[key]);
  if(col) order.sort((a,b)=> (col[b]-col[a]) || (a-b));
  shown = 0; $('tbody').innerHTML=''; more();
  $('count').textContent = order.length + ' latents';
}
function more(){
  const tb = $('tbody'), frag = document.createDocumentFragment();
  const end = Math.min(order.length, shown+PAGE);
  for(let i=shown;i<end;i++){
    const f = order[i], tr = document.createElement('tr');
    tr.className = 'latent-row' + (L.has[f]? '' : ' noctx') + (f===selected? ' selected':'');
    tr.dataset.latent = f;
    const cells = [f, L.group[f]+1, fmt(L.density[f]), fmt(L.max[f])];
    if(L.dec_cos) cells.push(fmt(L.dec_cos[f]));
    for(const c of cells){ const td=document.createElement('td'); td.textContent=c; tr.appendChild(td); }
    tr.addEventListener('click', ()=>show(f));
    frag.appendChild(tr);
  }
  tb.appendChild(frag); shown = end;
  $('more').style.display = shown < order.length ? '' : 'none';
}
function renderContext(val, toks, acts, center, top){
  const div = el('div','context');
  div.appendChild(el('span','val', fmt(val)));
  toks.forEach((t,i)=>{
    const s = el('span', 'tok' + (i===center? ' center':'')); let txt = tokText(t);
    if(txt.indexOf('\n')>=0){ txt = txt.replace(/\n/g,'\u23ce'); s.classList.add('nl'); }
    s.textContent = txt;
    const a = acts[i];
    if(a>0){ const al = Math.min(1, a/(top||1)); s.style.background = 'rgba(255,87,34,'+al.toFixed(3)+')'; }
    s.title = 'token ' + t + ' · activation ' + fmt(a);
    div.appendChild(s);
  });
  return div;
}
function snippet(f){
  const rows = D.contexts[String(f)]; if(!rows || !rows.length) return null;
  const [val, toks, acts, center] = rows[0], a = Math.max(0, center-6);
  return renderContext(val, toks.slice(a, center+3), acts.slice(a, center+3), center-a, val);
}
function renderNav(f){
  const box = $('nav'); box.innerHTML=''; if(!X.hier) return;
  const H = X.hier, p = H.parent[f];
  const line = el('div','parent-line');
  if(p>=0){ line.appendChild(el('span',null,'parent: ')); const a=latLink(p); a.classList.add('parent'); line.appendChild(a);
    line.appendChild(el('span',null,' (group '+(L.group[p]+1)+') · P(parent | this) '+fmt(H.pp[f])+
      ' · P(this | parent) '+fmt(H.pc[f])+' · lift '+fmt(H.lift[f])+' · decoder cosine '+fmt(H.cos[f]))); }
  else line.appendChild(el('span',null, L.group[f]===0 ? 'group 1: no parent (a root)' : 'no parent: never co-fires with an earlier latent'));
  box.appendChild(line);
  const ch = kids[f] || [];
  if(ch.length){
    box.appendChild(el('div','sub', ch.length + ' children (latents of later groups whose parent this is), most dependent first:'));
    const ul = el('ul','children');
    for(const c of ch.slice(0, 20)){
      const li = el('li'); li.appendChild(latLink(c));
      li.appendChild(el('span','meta',' g'+(L.group[c]+1)+' · P '+fmt(H.pp[c])+' · lift '+fmt(H.lift[c])+' · cos '+fmt(H.cos[c])+' · density '+fmt(L.density[c])+' '));
      const sn = snippet(c); if(sn) li.appendChild(sn);
      ul.appendChild(li);
    }
    box.appendChild(ul);
  }
}
function renderHist(f){
  const box = $('hist'); box.innerHTML=''; if(!X.hist) return;
  const c = X.hist[f], n = D.n_tokens, H = 110, nb = c.length;
  if(!c.some(v=>v>0)) return;
  const ys = c.map(v => v>0 ? Math.log10(v/n) : null);
  const top = Math.max(...ys.filter(v=>v!==null)), bot = Math.log10(0.5/n);
  box.appendChild(el('h3',null,'Activation histogram (bar height: log10 density of tokens per bin)'));
  const wrap = el('div','hist-wrap'), axis = el('div','hist-axis');
  axis.appendChild(el('span',null,top.toFixed(1))); axis.appendChild(el('span',null,bot.toFixed(1)));
  const plot = el('div','histogram'); plot.style.height = H+'px';
  ys.forEach((y,i)=>{ const bar = el('div', y===null? 'bar empty' : 'bar');
    bar.style.height = (y===null? 0 : Math.max(1, (y-bot)/(top-bot||1)*H)) + 'px';
    bar.title = c[i]+' tokens in ['+fmt(i*X.hist_max[f]/nb)+', '+fmt((i+1)*X.hist_max[f]/nb)+')';
    plot.appendChild(bar); });
  wrap.appendChild(axis); wrap.appendChild(plot); box.appendChild(wrap);
  const xl = el('div','hist-x'); xl.appendChild(el('span',null,'0')); xl.appendChild(el('span',null,'activation'));
  xl.appendChild(el('span',null,fmt(X.hist_max[f]))); box.appendChild(xl);
}
function renderDLA(f){
  const box = $('dla'); box.innerHTML=''; if(!X.dla) return;
  box.appendChild(el('h3',null,'Direct logit attribution of the decoder direction (final norm gain + unembedding)'));
  const wrap = el('div','dla-wrap');
  for(const [key, vk, title, cls] of [['pos','posv','promoted','dla-pos'],['neg','negv','suppressed','dla-neg']]){
    const t = el('table', cls); const hr = el('tr'); hr.appendChild(el('th',null,title)); hr.appendChild(el('th',null,'logit'));
    t.appendChild(hr);
    X.dla[key][f].forEach((id,i)=>{ const tr = el('tr'); tr.appendChild(el('td','tok', tokText(id).replace(/\n/g,'\u23ce')));
      tr.appendChild(el('td',null, fmt(X.dla[vk][f][i]))); t.appendChild(tr); });
    wrap.appendChild(t);
  }
  box.appendChild(wrap);
}
function renderQuant(f){
  const box = $('quant'); box.innerHTML=''; if(!X.quant) return;
  const ivs = X.quant[String(f)]; if(!ivs) return;
  box.appendChild(el('h3',null,'Contexts by activation quantile (random samples, seeded)'));
  const names = ['0–25 %','25–50 %','50–75 %','75–100 %'];
  for(const [lo, hi, rows] of ivs.slice().reverse()){
    const i = ivs.indexOf(ivs.find(v=>v[0]===lo && v[1]===hi));
    box.appendChild(el('div','interval', 'quantile ' + (names[i] || i) + ' · activations ' + fmt(lo) + ' – ' + fmt(hi)));
    for(const [val, toks, acts, center] of rows) box.appendChild(renderContext(val, toks, acts, center, L.max[f]));
  }
}
function show(f){
  selected = f; $('overview').style.display = 'none'; $('latent-view').style.display = '';
  for(const tr of document.querySelectorAll('tr.selected')) tr.classList.remove('selected');
  const row = document.querySelector('tr[data-latent="'+f+'"]'); if(row) row.classList.add('selected');
  $('detail-title').textContent = 'Latent ' + f + ' (group ' + (L.group[f]+1) + ')';
  let st = 'density ' + fmt(L.density[f]) + ' · max activation ' + fmt(L.max[f]);
  if(L.dec_cos) st += ' · decoder max cosine to another latent ' + fmt(L.dec_cos[f]);
  if(L.coact && f < L.coact.length) st += ' · max co-activation Jaccard ' + fmt(L.coact[f]);
  $('detail-stats').textContent = st;
  renderNav(f); renderHist(f); renderDLA(f);
  const box = $('contexts'); box.innerHTML='';
  const rows = D.contexts[String(f)];
  renderQuant(f);
  if(!rows){ const p=document.createElement('p');
    p.textContent = L.density[f]>0 ? 'Contexts of this latent are not embedded in this page (see --browser-latents).'
                                   : 'This latent never fired on the scanned tokens.';
    box.appendChild(p); return; }
  box.appendChild(el('h3',null,'Top activating contexts'));
  const top = rows.length? rows[0][0] : 1;
  for(const [val, toks, acts, center] of rows) box.appendChild(renderContext(val, toks, acts, center, top));
}
function table(head, rows){
  const t = el('table','summary'); const hr = el('tr'); for(const h of head) hr.appendChild(el('th',null,h)); t.appendChild(hr);
  for(const r of rows){ const tr = el('tr'); for(const c of r){ const td = el('td');
    if(c instanceof Node) td.appendChild(c); else td.textContent = (typeof c === 'number') ? fmt(c) : (c===null? '–' : c);
    tr.appendChild(td); } t.appendChild(tr); }
  return t;
}
function links(list){ const s = el('span'); list.forEach(([f, n], i)=>{ if(i) s.appendChild(document.createTextNode(', '));
  s.appendChild(latLink(f)); if(n!==undefined) s.appendChild(document.createTextNode(' ×'+n)); }); return s; }
function overview(){
  selected = -1; $('overview').style.display = ''; $('latent-view').style.display = 'none';
  const box = $('overview'); box.innerHTML=''; box.appendChild(el('h2',null,'Per-group summary'));
  const starts = [0].concat(D.ends.slice(0,-1)), G = X.hier ? X.hier.groups : null;
  const rows = D.ends.map((e,g)=>{ let live=0, dsum=0; for(let f=starts[g]; f<e; f++){ if(L.density[f]>0) live++; dsum+=L.density[f]; }
    const r = [g+1, starts[g]+'–'+(e-1), live+' / '+(e-starts[g]), dsum/(e-starts[g])];
    if(G){ const x = G[g]; r.push(x.with_parent===undefined? '–' : x.with_parent, x.mean_p_parent===undefined? '–' : x.mean_p_parent,
      x.frac_p_parent_over_0_9===undefined? '–' : x.frac_p_parent_over_0_9, x.median_lift===undefined? '–' : x.median_lift, x.mean_parent_cos===undefined? '–' : x.mean_parent_cos,
      x.frac_parent_in_previous_group===undefined? '–' : x.frac_parent_in_previous_group); }
    return r; });
  const head = ['group','latents','live','mean density'];
  if(G) head.push('with parent','mean P(parent|child)','share P > 0.9','median lift','mean decoder cos to parent','parent in previous group');
  box.appendChild(table(head, rows));
  const A = X.absorption;
  if(A){
    box.appendChild(el('h2',null,'Feature absorption, first-letter task (encoder side), per prefix'));
    box.appendChild(table(['prefix','latents','letters','absorption','full absorption','false negatives','split latents'],
      A.prefixes.map(p=>[p.prefix, p.latents, p.letters_scored, p.absorption_rate, p.full_absorption_rate, p.false_negative_rate, p.mean_split_latents])));
    const last = A.prefixes[A.prefixes.length-1];
    box.appendChild(el('h3',null,'Per letter, prefix '+last.prefix+' (all latents)'));
    box.appendChild(table(['letter','main latents','TP words','false neg.','absorption','full abs.','top absorbers','fully absorbed words'],
      last.letters.map(r=>[r.letter, links(r.main_latents.map(f=>[f])), r.n_true_positives, r.false_negative_rate, r.absorption_rate,
        r.full_absorption_rate, links(r.absorbers), r.examples.map(e=>e[0]).join(', ')])));
  }
}
const gsel = $('group');
D.ends.forEach((e,i)=>{ const o=document.createElement('option'); o.value=i;
  o.textContent='group '+(i+1)+' (<'+e+')'; gsel.appendChild(o); });
if(!L.dec_cos){ $('th-dec').remove(); $('sort').querySelector('option[value=dec_cos]').remove(); }
if(!L.coact){ $('sort').querySelector('option[value=coact]').remove(); }
for(const id of ['group','sort','onlyctx']) $(id).addEventListener('change', build);
$('search').addEventListener('input', build);
$('more').addEventListener('click', more);
$('summary-btn').addEventListener('click', overview);
for(const th of document.querySelectorAll('th[data-sort]'))
  th.addEventListener('click', ()=>{ $('sort').value = th.dataset.sort; build(); });
let site = D.sites && D.sites.input_hook ? (D.sites.input_hook + ' \u2192 ' + D.sites.output_hook + ' · ') : '';
$('summary').textContent = site + D.n_tokens + ' tokens scanned · ' + F + ' latents · ' +
  Object.keys(D.contexts).length + ' with contexts embedded';
build(); overview();
})();
"""


def browser_html(
    samples: SampleSet, max_latents: int = 2000, contexts_per_latent: int = 10, extras: PageExtras | None = None
) -> str:
    """The complete page as a string (see ``write_browser``)."""
    data = browser_data(samples, max_latents, contexts_per_latent, extras)
    payload = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    # "<" only occurs inside JSON strings: as \u003c it can neither close the script element nor open a comment
    # ("<\!--" would, but is not valid JSON: JSON.parse rejected the whole page when a token held "<!--")
    payload = payload.replace("<", "\\u003c")
    title = html.escape(f"Feature browser — {data['name']}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_CSS}</style></head>
<body>
<header><h1>{title}</h1><div id="summary"></div></header>
<div id="main">
<aside id="list-panel">
  <div class="controls">
    <label>group <select id="group"><option value="all">all</option></select></label>
    <label>sort <select id="sort"><option value="density">density</option><option value="max">max act.</option>
      <option value="dec_cos">decoder cos</option><option value="coact">co-activation</option>
      <option value="index">index</option></select></label>
    <label>latent # <input id="search" type="text" placeholder="prefix"></label>
    <label><input id="onlyctx" type="checkbox" checked> with contexts</label>
    <span id="count"></span>
  </div>
  <div id="table-wrap"><table id="latents"><thead><tr>
    <th data-sort="index">latent</th><th>group</th><th data-sort="density">density</th>
    <th data-sort="max">max act.</th><th id="th-dec" data-sort="dec_cos">dec. cos</th>
  </tr></thead><tbody id="tbody"></tbody></table>
  <button id="more">show more</button></div>
</aside>
<section id="detail"><button id="summary-btn">summary</button><div id="overview"></div>
<div id="latent-view" style="display:none"><h2 id="detail-title">Click a latent to see its page</h2>
<div id="detail-stats"></div><div id="nav"></div><div id="hist"></div><div id="dla"></div><div id="contexts"></div>
<div id="quant"></div></div></section>
</div>
<script id="data" type="application/json">{payload}</script>
<script>{_JS}</script>
</body></html>
"""


def write_browser(
    samples: SampleSet,
    path: str,
    max_latents: int = 2000,
    contexts_per_latent: int = 10,
    extras: PageExtras | None = None,
) -> str:
    """Write the self-contained HTML feature browser to ``path``; returns it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(browser_html(samples, max_latents, contexts_per_latent, extras))
    return path
