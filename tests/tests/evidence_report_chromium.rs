//! The evidence report in a real browser: a cluster runs a scheduled drill, `tandem evidence
//! export --lang en|vi` writes the folder in each language, and Debian's headless Chromium
//! (1) lays each report out at the A4 printable width with its print stylesheet and measures,
//! in the page, that no table (and no cell) is wider than the page, and (2) prints each to PDF,
//! whose page count must be sane for the measured height of the content.
//!
//! Without Chromium the test fails when `CI=true` (`.ci/run` installs the `chromium` package)
//! and is skipped with a notice otherwise. With `TANDEM_WRITE_REPORT_SCREENSHOTS=1` it also
//! writes the screenshots of docs/evidence.md (docs/img/evidence-report-{en,vi}.png).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tandem_tests::{dump_logs, NodeProc, Topo, TopoOpts};

/// A4 is 210 × 297 mm; the print stylesheet's `@page` margins are 12 mm: the printable area is
/// 186 × 273 mm, at CSS's 96 px per inch 703 × 1032 px.
const A4_PRINTABLE_W_PX: u32 = 703;
const A4_PRINTABLE_H_PX: f64 = 1032.0;

/// The Chromium binary: `$TANDEM_CHROMIUM`, else `/usr/bin/chromium`, else `chromium` on the
/// PATH; `None` when there is none.
fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("TANDEM_CHROMIUM").map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/chromium")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.is_file() {
            return Some(c);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
}

/// Runs headless Chromium with `args` on `page`, in a fresh profile; returns stdout.
fn run_chromium(bin: &Path, profile: &Path, args: &[String], page: &Path) -> String {
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--allow-file-access-from-files",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Measures, in the page, at load: the print stylesheet's rules are applied as screen rules
/// (the same layout as printing, without @page), then every table and every cell is compared
/// with the page width. The result is written into the DOM as JSON in `#tandem-probe`.
const PROBE: &str = r#"<script>
(function () {
  for (const sheet of document.styleSheets) {
    const print = [];
    for (const rule of sheet.cssRules) {
      if (rule instanceof CSSMediaRule && rule.media.mediaText.includes('print')) {
        for (const inner of rule.cssRules) {
          if (!(inner instanceof CSSPageRule)) print.push(inner.cssText);
        }
      }
    }
    for (const text of print) sheet.insertRule(text, sheet.cssRules.length);
  }
  const page = document.documentElement.clientWidth;
  const over = [];
  const tables = document.querySelectorAll('table');
  tables.forEach(function (t, i) {
    const r = t.getBoundingClientRect();
    if (r.right > page + 0.5 || t.scrollWidth > t.clientWidth + 1) {
      over.push({table: i, class: t.className, right: r.right, scroll: t.scrollWidth});
    }
    t.querySelectorAll('td,th').forEach(function (c) {
      if (c.scrollWidth > c.clientWidth + 1) {
        over.push({table: i, class: t.className, cell: c.textContent.slice(0, 60),
                   scroll: c.scrollWidth, width: c.clientWidth});
      }
    });
  });
  document.querySelectorAll('svg').forEach(function (s, i) {
    const r = s.getBoundingClientRect();
    if (r.right > page + 0.5) over.push({svg: i, right: r.right});
  });
  const out = document.createElement('pre');
  out.id = 'tandem-probe';
  out.textContent = 'PROBE' + JSON.stringify({
    page: page, tables: tables.length, over: over,
    docWidth: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight,
    lang: document.documentElement.lang
  }) + 'EBORP';
  document.body.appendChild(out);
})();
</script>"#;

/// Lays `report` out at the A4 printable width and returns the probe's measurements.
fn measure(bin: &Path, work: &Path, report: &Path) -> Value {
    let html = std::fs::read_to_string(report).unwrap();
    assert!(!html.contains("<script"), "the report itself has no script");
    let probe = work.join(format!(
        "probe-{}",
        report
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
    ));
    std::fs::create_dir_all(&probe).unwrap();
    let page = probe.join("report.html");
    std::fs::write(&page, html.replace("</body>", &format!("{PROBE}</body>"))).unwrap();
    let dom = run_chromium(
        bin,
        &work.join("profile"),
        &[
            format!("--window-size={A4_PRINTABLE_W_PX},1200"),
            "--dump-dom".into(),
        ],
        &page,
    );
    // The script's own text holds `'PROBE' +`; its output is `PROBE{...}EBORP`.
    let json = dom
        .split_once("PROBE{")
        .and_then(|(_, s)| s.split_once("}EBORP"))
        .map(|(s, _)| format!("{{{s}}}"))
        .unwrap_or_else(|| panic!("no probe result in the DOM of {}", page.display()));
    serde_json::from_str(
        &json
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">"),
    )
    .unwrap()
}

/// Prints `report` to PDF and returns its page count (`/Type /Page` objects).
fn pdf_pages(bin: &Path, work: &Path, report: &Path, name: &str) -> usize {
    let pdf = work.join(format!("{name}.pdf"));
    run_chromium(
        bin,
        &work.join("profile"),
        &[
            format!("--print-to-pdf={}", pdf.display()),
            "--no-pdf-header-footer".into(),
        ],
        report,
    );
    let bytes = std::fs::read(&pdf).unwrap();
    assert!(
        bytes.starts_with(b"%PDF-"),
        "{} is not a PDF",
        pdf.display()
    );
    let text = String::from_utf8_lossy(&bytes);
    text.match_indices("/Type /Page")
        .filter(|(i, m)| !text[i + m.len()..].starts_with('s'))
        .count()
}

/// Waits until the scheduled drill `run` has ended in the audit chain.
fn wait_drill_end(topo: &Topo) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, _) = topo.tandem(&["audit", "--json"]);
        if code == 0 {
            let ended = out
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| r["kind"] == "drill" && r["detail"]["phase"] == "end");
            if let Some(r) = ended {
                return r["detail"]["run_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
            }
        }
        if Instant::now() > deadline {
            dump_logs(topo);
            panic!("no drill ended within 60 s");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_report_fits_a4_and_prints_in_english_and_vietnamese_in_headless_chromium() {
    let Some(bin) = chromium() else {
        let msg = "headless Chromium not found (/usr/bin/chromium, Debian package `chromium`; \
                   or set TANDEM_CHROMIUM): the evidence report cannot be checked in a browser";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}; .ci/run installs it");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    };

    // 1. A TLS cluster whose group drills every 3 s; wait for a scheduled drill to end.
    let topo = Topo::new(TopoOpts {
        group_extra: "drill_every = \"3s\"",
        ..TopoOpts::default()
    });
    let mut names = topo.coordinators.clone();
    names.push("hanoi-rep".into());
    names.push("hcm-rep".into());
    let procs: Vec<NodeProc> = names.iter().map(|n| NodeProc::start(&topo, n)).collect();
    let drill = wait_drill_end(&topo);
    let (code, out, err) = topo.tandem(&["verify", "vol"]);
    assert_eq!(code, 0, "tandem verify: {out}\n{err}");

    // 2. The folder in each language; each verifies (the manifest names its language), and
    //    `evidence report` renders the Vietnamese report again from the folder, the same bytes.
    let work = tempfile::tempdir().unwrap();
    let mut reports = Vec::new();
    for lang in ["en", "vi"] {
        let ev = work.path().join(format!("ev-{lang}"));
        let (code, out, err) = topo.tandem(&[
            "evidence",
            "export",
            "--out",
            ev.to_str().unwrap(),
            "--lang",
            lang,
        ]);
        assert_eq!(code, 0, "evidence export --lang {lang}: {out}\n{err}");
        let (code, out, err) = topo.tandem(&["evidence", "verify", ev.to_str().unwrap()]);
        assert_eq!(code, 0, "evidence verify ({lang}): {out}\n{err}");
        let html = std::fs::read_to_string(ev.join("report.html")).unwrap();
        assert!(html.contains(&format!("<html lang=\"{lang}\">")));
        assert!(
            html.contains(&format!("id=\"run-{drill}\"")),
            "the drill's row"
        );
        assert!(
            html.contains("id=\"control-decree-53-2022\""),
            "controls mapping"
        );
        reports.push((lang, ev.join("report.html")));
    }
    drop(procs);
    let again = work.path().join("again-vi.html");
    let ev_vi = work.path().join("ev-vi");
    let (code, out, err) = topo.tandem(&[
        "evidence",
        "report",
        ev_vi.to_str().unwrap(),
        "--lang",
        "vi",
        "--out",
        again.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "evidence report: {out}\n{err}");
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(ev_vi.join("report.html")).unwrap()
    );

    // 3. In Chromium: no table or cell wider than the A4 printable width, and a PDF whose
    //    page count matches the measured height of the content. The content of a one-group
    //    cluster with a few drills is a few A4 pages tall; printing may add at most a page per
    //    two pages of content (breaks kept out of tables rows and charts) and one more, so
    //    more pages than that means the layout came apart (a table split across pages
    //    sideways, one element per page).
    for (lang, report) in &reports {
        let m = measure(&bin, work.path(), report);
        eprintln!("{lang}: {m}");
        assert_eq!(m["lang"], *lang);
        assert_eq!(m["page"], A4_PRINTABLE_W_PX, "layout width: {m}");
        assert!(m["tables"].as_u64().unwrap() >= 8, "{m}");
        assert_eq!(m["over"], Value::Array(Vec::new()), "{lang}: overflow: {m}");
        assert!(
            m["docWidth"].as_u64().unwrap() <= u64::from(A4_PRINTABLE_W_PX),
            "{lang}: the page scrolls sideways: {m}"
        );
        let content_pages = (m["height"].as_f64().unwrap() / A4_PRINTABLE_H_PX).ceil() as usize;
        let pages = pdf_pages(&bin, work.path(), report, lang);
        eprintln!("{lang}: {pages} PDF pages for {content_pages} pages of content");
        assert!(
            (1..=content_pages + content_pages / 2 + 1).contains(&pages),
            "{lang}: {pages} PDF pages for {content_pages} A4 pages of content"
        );
    }

    // 4. The screenshots of docs/evidence.md, when asked for.
    if std::env::var("TANDEM_WRITE_REPORT_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/img");
        std::fs::create_dir_all(&img).unwrap();
        for (lang, report) in &reports {
            let png = img.join(format!("evidence-report-{lang}.png"));
            run_chromium(
                &bin,
                &work.path().join("profile"),
                &[
                    format!("--screenshot={}", png.display()),
                    "--window-size=1000,1400".into(),
                ],
                report,
            );
            eprintln!("wrote {}", png.display());
        }
    }
}
