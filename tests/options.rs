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
