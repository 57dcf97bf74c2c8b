//! Organ names and class ids: the FLARE22 label scheme every bundled model and data set reader uses,
//! and the TotalSegmentator ids mapped onto it.

use anyhow::Result;

/// FLARE22 organ ids (the label values written), with their names.
pub const FLARE22_ORGANS: [(u8, &str); 13] = [
    (1, "liver"),
    (2, "right kidney"),
    (3, "spleen"),
    (4, "pancreas"),
    (5, "aorta"),
    (6, "inferior vena cava"),
    (7, "right adrenal gland"),
    (8, "left adrenal gland"),
    (9, "gallbladder"),
    (10, "esophagus"),
    (11, "stomach"),
    (12, "duodenum"),
    (13, "left kidney"),
];

/// FLARE22 class id of an organ name ("liver", "right kidney", "left_kidney", "ivc", ...) or number.
pub fn organ_class(name: &str) -> Result<usize> {
    let key = name.trim().to_lowercase().replace(['_', '-'], " ");
    if let Ok(n) = key.parse::<usize>() {
        return Ok(n);
    }
    let aliases = [
        ("kidney right", 2),
        ("kidney left", 13),
        ("ivc", 6),
        ("right adrenal", 7),
        ("left adrenal", 8),
        ("gall bladder", 9),
    ];
    if let Some((_, id)) = aliases.iter().find(|(a, _)| *a == key) {
        return Ok(*id);
    }
    match FLARE22_ORGANS.iter().find(|(_, n)| *n == key) {
        Some((id, _)) => Ok(*id as usize),
        None => crate::fail!(
            InvalidInput,
            "unknown organ {name:?}; use one of: {}",
            FLARE22_ORGANS.iter().map(|(_, n)| n.replace(' ', "-")).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// TotalSegmentator "total" id to FLARE22 id (0 for structures FLARE22 does not label).
pub fn totalseg_to_flare22(id: u8) -> u8 {
    match id {
        5 => 1,
        2 => 2,
        1 => 3,
        7 => 4,
        52 => 5,
        63 => 6,
        8 => 7,
        9 => 8,
        4 => 9,
        15 => 10,
        6 => 11,
        19 => 12,
        3 => 13,
        _ => 0,
    }
}

/// TotalSegmentator "total_mr" id (its MR task's table, 1-50) to FLARE22 id (0 for the rest).
pub fn totalseg_mr_to_flare22(id: u8) -> u8 {
    match id {
        5 => 1,
        2 => 2,
        1 => 3,
        7 => 4,
        23 => 5,
        24 => 6,
        8 => 7,
        9 => 8,
        4 => 9,
        12 => 10,
        6 => 11,
        14 => 12,
        3 => 13,
        _ => 0,
    }
}

/// The FLARE22 name of a class id ("class N" for ids it does not name).
pub fn organ_name(class: usize) -> String {
    FLARE22_ORGANS.iter().find(|(id, _)| *id as usize == class).map_or(format!("class {class}"), |(_, n)| n.to_string())
}

/// The index of `organ` (a name or a number) in a model's own class list: names match ignoring case,
/// '_' and '-', or when both are the same FLARE22 organ ("right-kidney" finds "kidney_right"). Names
/// not in the list are refused, listing it.
pub fn class_in(classes: &[String], organ: &str) -> Result<usize> {
    let key = |s: &str| s.trim().to_lowercase().replace(['_', '-'], " ");
    let wanted = key(organ);
    if let Ok(n) = wanted.parse::<usize>() {
        if n < classes.len() {
            return Ok(n);
        }
        crate::fail!(InvalidInput, "class {n}: the model has classes 0 to {}", classes.len() - 1);
    }
    let flare = organ_class(organ).ok();
    let found = classes.iter().position(|c| key(c) == wanted || (flare.is_some() && organ_class(c).ok() == flare));
    match found {
        Some(i) => Ok(i),
        None => crate::fail!(
            InvalidInput,
            "organ {organ:?} is not one of the model's classes ({})",
            classes.iter().enumerate().map(|(i, c)| format!("{i} {c}")).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The name of output channel `class`: the model's own where it lists classes, else FLARE22's.
pub fn name_in(classes: Option<&[String]>, class: usize) -> String {
    classes.and_then(|c| c.get(class)).cloned().unwrap_or_else(|| organ_name(class))
}
