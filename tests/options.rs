//! `Options::from_pairs`: the Python package's keyword arguments go through the command line's parser.

use xaiclip::explain::ScoreKind;
use xaiclip::explainer::{Options, Preset};
use xaiclip::ErrorKind;

fn pairs(p: &[(&'static str, &str)]) -> xaiclip::Result<Options> {
    Options::from_pairs(p.iter().map(|&(k, v)| (k, v.to_string())))
}

#[test]
fn pairs_parse_as_the_flags_do() {
    let o =
        pairs(&[("occlusion_window", "16"), ("same_budget", "true"), ("score", "dice"), ("preset", "paper")]).unwrap();
    assert_eq!(o.occlusion_window, Some(16));
    assert!(o.same_budget);
    assert_eq!(o.score, Some(ScoreKind::Dice));
    assert_eq!(o.preset, Preset::Paper);
    assert_eq!(o.seed, 0);
    assert_eq!(pairs(&[]).unwrap(), Options::default());
    assert!(!pairs(&[("same_budget", "false")]).unwrap().same_budget);
    // The settings are the command line's: the paper preset's 2000 RISE masks, unless masks is given.
    assert_eq!(pairs(&[("preset", "paper")]).unwrap().settings(256).rise.masks, 2000);
    assert_eq!(pairs(&[("preset", "paper"), ("masks", "50")]).unwrap().settings(256).rise.masks, 50);
}

#[test]
fn bad_pairs_are_invalid_input_naming_the_option() {
    let e = pairs(&[("widnow", "3")]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("unknown option \"widnow\"") && e.to_string().contains("occlusion_window"), "{e}");
    let e = pairs(&[("masks", "many")]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("'many'") && e.to_string().contains("--masks"), "{e}");
    let e = pairs(&[("score", "best")]).unwrap_err();
    assert!(e.to_string().contains("'best'"), "{e}");
    let e = pairs(&[("same_budget", "yes")]).unwrap_err();
    assert!(e.to_string().contains("expected true or false"), "{e}");
}

/// The defaults `--help` states by hand ("[default: 32; paper: 64 at 512 px]") are the ones the settings
/// use: giving the stated value explicitly changes nothing, for the default preset and for the paper's.
#[test]
fn defaults_stated_in_help_are_the_settings_defaults() {
    use clap::Args;
    let mut command = Options::augment_args(clap::Command::new("options"));
    command.build();
    let json = |p: &[(&str, &str)], size: usize| {
        Options::from_pairs(p.iter().map(|&(k, v)| (k, v.to_string()))).unwrap().settings(size).to_json()
    };
    let mut checked = 0;
    for arg in command.get_arguments() {
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let Some(stated) = help.split("[default: ").nth(1).and_then(|s| s.split(']').next()) else { continue };
        let id = arg.get_id().as_str();
        for part in stated.split("; ") {
            let (preset, value, size) = match part.strip_prefix("paper: ") {
                Some(v) => ("paper", v.split(" at ").next().unwrap(), 512),
                None => ("default", part, 256),
            };
            assert_eq!(
                json(&[("preset", preset), (id, value)], size),
                json(&[("preset", preset)], size),
                "--{}: help says {part:?}, the {preset} preset differs",
                arg.get_long().unwrap_or(id)
            );
            checked += 1;
        }
    }
    // score, baseline, occlusion window/stride, masks, grid, p1, samples, kernel width, segmenter,
    // segments, margin, curve steps, ROI coverage, and their paper values.
    assert!(checked >= 20, "only {checked} stated defaults found");
}
