//! report.html in a real browser: headless Chromium (Debian's `chromium`, installed by .ci/run) opens the
//! reports of `demo`, `explain` and `eval`. Checked: every expected section id is there, every image decoded
//! (complete, non-zero natural size), no console message at all (the page has no script, so any is an
//! error), and a screenshot that is not blank. SKIP where chromium is absent, except in CI.

use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser", "google-chrome"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

fn xaiclip(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_xaiclip")).args(args).output().unwrap();
    assert!(out.status.success(), "xaiclip {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs chromium headless with `extra` flags on `url`; returns (stdout, stderr).
fn browse(chromium: &Path, profile: &Path, extra: &[String], url: &str) -> (String, String) {
    let out = Command::new("timeout")
        .arg("120")
        .arg(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--allow-file-access-from-files"])
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Opens `report` in chromium and checks it rendered; `sections` are the ids it must have.
fn check_report(chromium: &Path, report: &Path, sections: &[&str], min_images: usize) {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("check.html");
    // The wrapper reads the report's DOM after it loaded (same origin under --allow-file-access-from-files)
    // and prints what it found into its own DOM, which --dump-dom returns.
    std::fs::write(
        &wrapper,
        format!(
            "<html><body><pre id=\"out\">pending</pre><iframe id=\"f\" src=\"file://{}\" width=\"1400\" height=\"900\"></iframe>\
             <script>document.getElementById('f').onload = function () {{ var d = this.contentDocument; \
             var imgs = Array.from(d.images).map(function (i) {{ return [i.complete, i.naturalWidth, i.naturalHeight]; }}); \
             var ids = Array.from(d.querySelectorAll('section[id]')).map(function (s) {{ return s.id; }}); \
             document.getElementById('out').textContent = JSON.stringify({{ images: imgs, sections: ids, title: d.title }}); }};</script></body></html>",
            report.display()
        ),
    )
    .unwrap();
    let profile = dir.path().join("profile");
    let (dom, _) = browse(chromium, &profile, &["--dump-dom".into()], &format!("file://{}", wrapper.display()));
    let start = dom.find("<pre id=\"out\">").expect("wrapper output") + "<pre id=\"out\">".len();
    let text = &dom[start..start + dom[start..].find("</pre>").unwrap()];
    let found: serde_json::Value = serde_json::from_str(&text.replace("&quot;", "\"").replace("&amp;", "&"))
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    let ids: Vec<&str> = found["sections"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(ids, sections, "{}: section ids", report.display());
    let images = found["images"].as_array().unwrap();
    assert!(
        images.len() >= min_images,
        "{}: {} images, expected at least {min_images}",
        report.display(),
        images.len()
    );
    for (i, img) in images.iter().enumerate() {
        assert!(
            img[0].as_bool().unwrap() && img[1].as_u64().unwrap() > 0,
            "{}: image {i} not decoded: {img}",
            report.display()
        );
    }
    // The report itself, alone: a screenshot, and no console message.
    let shot = dir.path().join("shot.png");
    let (_, log) = browse(
        chromium,
        &profile,
        &[format!("--screenshot={}", shot.display()), "--window-size=1400,2400".into()],
        &format!("file://{}", report.display()),
    );
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "{}: console messages: {console:?}", report.display());
    let img = image::open(&shot).unwrap().to_rgb8();
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    let dark = img.pixels().filter(|p| p.0.iter().map(|&c| c as u32).sum::<u32>() < 300).count();
    // Figures give thousands of colours and dark pixels; a page of tables only, text.
    let (min_colours, min_dark) = if min_images > 0 { (500, 10_000) } else { (3, 500) };
    assert!(
        colours.len() > min_colours && dark > min_dark,
        "{}: screenshot looks blank ({} colours)",
        report.display(),
        colours.len()
    );
    if let Ok(keep) = std::env::var("XAICLIP_KEEP_SCREENSHOT") {
        std::fs::copy(
            &shot,
            Path::new(&keep).join(format!("{}.png", report.parent().unwrap().file_name().unwrap().to_string_lossy())),
        )
        .unwrap();
    }
}

#[test]
fn reports_render_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        assert!(std::env::var("CI").is_err(), "chromium is missing in CI (.ci/run installs it)");
        println!("SKIP: chromium not found (apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let d = demo.to_str().unwrap();
    xaiclip(&["--device", "cpu", "demo", "--out", d, "--masks", "50", "--samples", "30"]);
    let sections = ["case", "overlays", "curves", "tables", "metadata"];
    // Case, overlays, curves; the demo's CT case and its MR case.
    check_report(&chromium, &demo.join("report.html"), &sections, 3);
    check_report(&chromium, &demo.join("mr/report.html"), &sections, 3);
    let explain = dir.path().join("explain");
    let ct = demo.join("phantom/ct.nii.gz");
    let labels = demo.join("phantom/labels.nii.gz");
    xaiclip(&[
        "--device",
        "cpu",
        "explain",
        "--image",
        ct.to_str().unwrap(),
        "--label",
        labels.to_str().unwrap(),
        "--slice",
        "organ-center",
        "--method",
        "occlusion",
        "--out",
        explain.to_str().unwrap(),
    ]);
    check_report(&chromium, &explain.join("report.html"), &sections, 3);
    // eval: the summary, every item linked to its overlay (each link a file that exists), settings.
    let set = dir.path().join("set");
    xaiclip(&["phantom", "--layout", "flare22", "--cases", "1", "--out", set.to_str().unwrap()]);
    let results = dir.path().join("results");
    xaiclip(&[
        "--device",
        "cpu",
        "eval",
        set.to_str().unwrap(),
        "--dataset",
        "flare22",
        "--methods",
        "occlusion",
        "--roi",
        "none,clip",
        "--occlusion-window",
        "64",
        "--occlusion-stride",
        "64",
        "--faithfulness-steps",
        "4",
        "--out",
        results.to_str().unwrap(),
    ]);
    let report = results.join("report.html");
    let page = std::fs::read_to_string(&report).unwrap();
    let links: Vec<&str> =
        page.split("<a href=\"").skip(1).filter_map(|s| s.split('"').next()).filter(|l| !l.starts_with('#')).collect();
    assert_eq!(links.len(), 2, "one overlay link per item");
    for link in links {
        assert!(results.join(link).is_file(), "{link} does not exist");
    }
    check_report(&chromium, &report, &["summary", "cases", "metadata"], 0);
}
