//! Every event the program knows is folded by a decider, so auditors can
//! replay any aggregate's stream: a new aggregate that forgets to register
//! with `Replayer::of` fails here. (Outside the crate's own tests, whose
//! example event sets have no decider.)

use domain::replay::StreamFold;

#[test]
fn every_event_type_has_a_decider_to_replay_it() {
    let registry = domain::event_registry();
    let unfolded: Vec<_> = registry
        .type_names()
        .filter(|ty| StreamFold::for_first(ty).is_err())
        .collect();
    assert!(unfolded.is_empty(), "no decider folds {unfolded:?}");
    assert!(registry.type_names().count() > 20);
}
