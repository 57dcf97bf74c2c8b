//! The README's Slurm array (docs/slurm/eval_array.sh) on a real one-node Slurm: three shards of a
//! synthetic data set, one task requeued while it runs, then `--merge`, which must equal an unsharded
//! run item for item. `.ci/run` installs and starts Slurm (.ci/slurm-up.sh); elsewhere the test says
//! SKIP when no cluster answers.

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const EVAL_ARGS: &str = "--organs liver --methods occlusion,rise --roi none --occlusion-window 128 \
    --occlusion-stride 128 --masks 60 --faithfulness-steps 0 --slices every-1";

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run");
    assert!(o.status.success(), "{:?}: {}", cmd, String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn lines_without_time(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for timing in ["seconds", "forward_fraction"] {
                v.as_object_mut().unwrap().remove(timing);
            }
            v
        })
        .collect()
}

#[test]
fn slurm_array_with_a_requeue_merges_to_the_unsharded_run() {
    let up = Command::new("sinfo").arg("-h").output().is_ok_and(|o| o.status.success());
    if !up {
        // .ci/run says why when it could not start the cluster; without a reason, CI must not skip.
        let reason = std::env::var("XAICLIP_SLURM_SKIP_REASON").ok();
        assert!(
            std::env::var("CI").is_err() || reason.is_some(),
            "CI must run the Slurm test (.ci/run starts .ci/slurm-up.sh)"
        );
        let why = reason.unwrap_or_else(|| "no Slurm cluster answers sinfo (run .ci/slurm-up.sh as root)".into());
        println!("SKIP: {why}");
        eprintln!("SKIP: {why}");
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (root, out, reference) = (tmp.path().join("data"), tmp.path().join("results"), tmp.path().join("reference"));
    phantom_tree("flare22", &root, 4);
    let mut args = vec!["eval", "--dataset", "flare22", root.to_str().unwrap()];
    args.extend(EVAL_ARGS.split_whitespace());
    args.extend(["--out", reference.to_str().unwrap()]);
    let o = xaiclip(&args);
    assert!(o.status.success(), "{}", stderr(&o));

    let script = repo().join("docs/slurm/eval_array.sh");
    let job = run(Command::new("sbatch")
        .args(["--parsable", "--array=0-2", "--cpus-per-task=1"])
        .arg(format!("--output={}/slurm-%A_%a.out", tmp.path().display()))
        .arg(&script)
        .env("XAICLIP", env!("CARGO_BIN_EXE_xaiclip"))
        .env("DATA", &root)
        .env("OUT", &out)
        .env("EVAL_ARGS", EVAL_ARGS));
    let job = job.trim().split(';').next().unwrap().to_string();
    // Requeue task 0 (two cases) once it has written results, i.e. while it runs.
    let first = out.join("shard-0/results.jsonl");
    while std::fs::read_to_string(&first).map_or(0, |t| t.lines().count()) < 1 {
        assert!(started.elapsed() < Duration::from_secs(240), "task 0 never wrote results");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = std::fs::read_to_string(&first).unwrap().lines().count();
    eprintln!("requeueing {job}_0 at {:.1} s with {before} result lines written", started.elapsed().as_secs_f64());
    run(Command::new("scontrol").args(["requeue", &format!("{job}_0")]));
    loop {
        let queued = run(Command::new("squeue").args(["-h", "-j", &job]));
        if queued.trim().is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "array job {job} did not finish: {queued}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let shown = run(Command::new("scontrol").args(["show", "job", &format!("{job}_0")]));
    assert!(shown.contains("Restarts=1"), "task 0 was not requeued: {shown}");
    assert!(shown.contains("JobState=COMPLETED"), "task 0 did not complete: {shown}");

    let merged = tmp.path().join("merged");
    let shards: Vec<String> = (0..3).map(|i| out.join(format!("shard-{i}")).to_str().unwrap().to_string()).collect();
    let mut merge = vec!["eval", "--merge"];
    merge.extend(shards.iter().map(String::as_str));
    merge.extend(["--out", merged.to_str().unwrap()]);
    let o = xaiclip(&merge);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines_without_time(&merged.join("results.jsonl")), lines_without_time(&reference.join("results.jsonl")));
    let log = std::fs::read_to_string(tmp.path().join(format!("slurm-{job}_0.out"))).unwrap_or_default();
    eprintln!("task 0's output:\n{log}");
    eprintln!("slurm array with a requeue: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn readme_shows_the_script_the_test_runs() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let script = std::fs::read_to_string(repo().join("docs/slurm/eval_array.sh")).unwrap();
    assert!(readme.contains(script.trim()), "README's Slurm section must be docs/slurm/eval_array.sh verbatim");
}
