//! The report's look: the stylesheet for screen and print (A4, tables that wrap instead of
//! running off the page, black-and-white friendly marks) and the SVG patterns the charts use.

/// The inline stylesheet.
///
/// Print: A4 with 12 mm margins; cells wrap at spaces and break a word only when it cannot fit
/// (`overflow-wrap:break-word`; hashes, run ids and record lists anywhere), so a long hash, run
/// id or record list wraps inside its column; tables take the page width with
/// a fixed layout (on screen the browser sizes the columns); charts scale to the page; verdicts carry a mark (✓ ✗) besides their
/// colour, and the charts use line styles, hatching and marker shapes, so a black-and-white
/// print reads the same.
pub const STYLE: &str = "\
body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222;max-width:1100px}\
h1{font-size:1.6em}h2{border-bottom:2px solid #1565c0;margin-top:2em}\
table{border-collapse:collapse;margin:.6em 0 1.2em;max-width:100%}\
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;font-size:.92em;\
overflow-wrap:break-word}th{background:#eef3fa}td.records,td[id^=run-]{overflow-wrap:anywhere}\
table.wide{width:100%}table.summary th,table.summary td{font-size:.82em;padding:3px 4px}\
.pass{color:#1b5e20;font-weight:bold}.fail{color:#b71c1c;font-weight:bold;text-decoration:underline}\
.na{color:#666}code,.hash{font-family:ui-monospace,Consolas,monospace;font-size:.9em;\
word-break:break-all;overflow-wrap:anywhere}\
svg{max-width:100%;height:auto}\
.plot{fill:#fafafa;stroke:#999}.grid{stroke:#ddd}.ylab{font-size:10px;text-anchor:end;fill:#555}\
.xlab{font-size:10px;fill:#555}.end{text-anchor:end}.slab{font-size:11px;text-anchor:end}\
.sval{font-size:10px;fill:#555}.lg{font-size:10px;fill:#333}\
.bar.ok{fill:#2e7d32;stroke:#1b5e20}.bar.bad{fill:url(#tandem-hatch);stroke:#b71c1c;stroke-width:1.5}\
.bar.unk{fill:#fff;stroke:#555;stroke-dasharray:3 2}\
.legend{font-size:.85em;color:#555}\
.warn{background:#fff3e0;border:2px solid #e65100;padding:.6em 1em;color:#bf360c}\
.controls td ul{margin:0;padding-left:1.1em}.controls li{margin:.1em 0}\
.controls col.c-name{width:14%}.controls col.c-what{width:18%}.controls col.c-status{width:10%}\
.st-covered{color:#1b5e20;font-weight:bold}.st-gaps{color:#8a5300;font-weight:bold}\
.st-findings,.st-none{color:#b71c1c;font-weight:bold;text-decoration:underline}\
nav.toc ol{columns:2}\
@media print{\
@page{size:A4;margin:12mm}\
body{margin:0;max-width:none;font-size:9pt;color:#000}\
h1{font-size:15pt}h2{font-size:12pt;break-after:avoid;border-bottom:1.5pt solid #000}\
h3,h4{break-after:avoid}\
table{width:100%;table-layout:fixed}table.identity{table-layout:auto}\
th,td{font-size:8pt;padding:2px 4px;border-color:#777}\
th{background:#eee}tr,svg{break-inside:avoid}table.summary th{font-size:7pt}\
a{color:inherit;text-decoration:none}\
.warn{color:#000;border-color:#000}\
nav.toc{display:none}}";

/// Hidden SVG holding the patterns the charts refer to (`url(#tandem-hatch)`), once per page.
pub const SVG_DEFS: &str = "<svg width=\"0\" height=\"0\" style=\"position:absolute\" \
aria-hidden=\"true\"><defs><pattern id=\"tandem-hatch\" width=\"6\" height=\"6\" \
patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" \
fill=\"#ffcdd2\"/><line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#b71c1c\" \
stroke-width=\"3\"/></pattern></defs></svg>";
