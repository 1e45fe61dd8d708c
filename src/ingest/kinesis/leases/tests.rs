use super::*;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_contact_belongs_to_the_shard_whose_range_holds_the_md5_of_its_id() {
    // MD5("c-1") = 298a664f...: in the lower half of the key space.
    assert_eq!(hash_key("c-1") >> 96, 0x298a_664f);
    let half = u128::MAX / 2;
    let low = ShardInfo {
        shard_id: "low".into(),
        parents: Vec::new(),
        hash_range: Some((0, half)),
    };
    let high = ShardInfo {
        hash_range: Some((half + 1, u128::MAX)),
        ..low.clone()
    };
    assert!(low.holds("c-1") && !high.holds("c-1"));
    let unknown = ShardInfo {
        hash_range: None,
        ..low
    };
    assert!(!unknown.holds("c-1"));
}

#[test]
fn children_of_a_listed_shard_start_at_trim_horizon_whatever_the_initial_position() {
    let info = |id: &str, parents: &[&str]| ShardInfo {
        shard_id: id.into(),
        parents: parents.iter().map(|p| p.to_string()).collect(),
        hash_range: None,
    };
    let shards = [
        info("parent", &[]),
        info("child-a", &["parent"]),
        info("child-b", &["parent", "gone"]),
        info("orphan", &["expired"]),
    ];
    let starts: Vec<&str> = shards
        .iter()
        .map(|s| start_of(s, &shards, LATEST))
        .collect();
    assert_eq!(starts, [LATEST, TRIM_HORIZON, TRIM_HORIZON, LATEST]);
}

fn lease(shard: &str, owner: Option<&str>, counter: u64, checkpoint: &str) -> Lease {
    Lease {
        key: format!("s/{shard}"),
        shard_id: shard.into(),
        owner: owner.map(Into::into),
        token: owner.map(|o| format!("{o}-token")),
        counter,
        checkpoint: checkpoint.into(),
        parents: Vec::new(),
        claimant: None,
    }
}

/// The leases taken, in key order (free ones are taken in random order), then the one
/// claimed.
fn keys(takes: &[Take]) -> Vec<&str> {
    let (mut taken, claimed): (Vec<&Take>, Vec<&Take>) =
        takes.iter().partition(|t| t.claim_from.is_none());
    taken.sort_by(|a, b| a.key.cmp(&b.key));
    taken
        .iter()
        .chain(&claimed)
        .map(|t| t.key.as_str())
        .collect()
}

fn held(keys: &[&str]) -> HashSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

#[test]
fn a_lone_worker_takes_every_free_lease() {
    let mut me = LeasePlanner::new("a", 10 * SECOND);
    let leases = [lease("1", None, 0, TRIM_HORIZON), lease("2", None, 0, "49")];
    let takes = me.plan(&leases, &held(&[]), Instant::now());
    assert_eq!(keys(&takes), ["s/1", "s/2"]);
    assert_eq!(takes[0].seen, 0);
}

#[test]
fn a_live_owner_keeps_its_lease_until_its_counter_stands_still() {
    let start = Instant::now();
    let mut me = LeasePlanner::new("b", 10 * SECOND);
    let owned = [lease("1", Some("a"), 5, "7")];
    assert!(me.plan(&owned, &held(&[]), start).is_empty());
    // Still 5 after 9 s: not yet expired. Renewed to 6: the clock starts again.
    assert!(me.plan(&owned, &held(&[]), start + 9 * SECOND).is_empty());
    let renewed = [lease("1", Some("a"), 6, "7")];
    assert!(
        me.plan(&renewed, &held(&[]), start + 15 * SECOND)
            .is_empty()
    );
    // 10 s without a renewal: expired, taken against the counter last seen.
    let takes = me.plan(&renewed, &held(&[]), start + 25 * SECOND);
    assert_eq!(
        takes,
        [Take {
            key: "s/1".into(),
            seen: 6,
            claim_from: None,
        }]
    );
}

#[test]
fn a_new_worker_claims_one_lease_at_a_time_until_the_share_is_even() {
    let mut b = LeasePlanner::new("b", 10 * SECOND);
    let mut a = LeasePlanner::new("a", 10 * SECOND);
    let now = Instant::now();
    let mut leases: Vec<Lease> = (1..=4)
        .map(|n| lease(&n.to_string(), Some("a"), 3, "1"))
        .collect();
    let takes = b.plan(&leases, &held(&[]), now);
    assert_eq!(keys(&takes), ["s/1"], "one claim per round");
    assert_eq!(
        takes[0].claim_from.as_deref(),
        Some("a"),
        "a is alive: asked"
    );

    // While a hands it over, b claims nothing more.
    leases[0].claimant = Some("b".into());
    assert!(b.plan(&leases, &held(&[]), now).is_empty());
    // a gives it back: free, but b's alone; a does not take it again.
    leases[0] = lease("1", None, 4, "1");
    leases[0].claimant = Some("b".into());
    let a_held = held(&["s/2", "s/3", "s/4"]);
    assert!(a.plan(&leases, &a_held, now).is_empty());
    let takes = b.plan(&leases, &held(&[]), now);
    assert_eq!(
        keys(&takes),
        ["s/1", "s/2"],
        "the free one taken, the next claimed"
    );
    assert_eq!(takes[0].claim_from, None);
    assert_eq!(takes[1].claim_from.as_deref(), Some("a"));

    leases[0] = lease("1", Some("b"), 5, "1");
    leases[1].claimant = Some("b".into());
    assert!(b.plan(&leases, &held(&["s/1"]), now).is_empty());
    leases[1] = lease("2", None, 4, "1");
    leases[1].claimant = Some("b".into());
    let takes = b.plan(&leases, &held(&["s/1"]), now);
    assert_eq!(keys(&takes), ["s/2"]);
    assert_eq!(takes[0].claim_from, None);

    // Two each: even, nothing moves (in either direction).
    leases[1] = lease("2", Some("b"), 4, "1");
    assert!(b.plan(&leases, &held(&["s/1", "s/2"]), now).is_empty());
    assert!(a.plan(&leases, &held(&["s/3", "s/4"]), now).is_empty());
}

#[test]
fn a_lease_handed_to_a_claimant_that_never_takes_it_is_free_after_a_lease_duration() {
    let start = Instant::now();
    let mut a = LeasePlanner::new("a", 10 * SECOND);
    let mut given_back = lease("1", None, 4, "1");
    given_back.claimant = Some("b".into());
    let leases = [given_back];
    assert!(a.plan(&leases, &held(&[]), start).is_empty());
    let takes = a.plan(&leases, &held(&[]), start + 11 * SECOND);
    assert_eq!(keys(&takes), ["s/1"]);
}

#[test]
fn a_worker_left_with_nothing_claims_from_one_holding_two_of_four_shards_among_three() {
    let mut c = LeasePlanner::new("c", 10 * SECOND);
    let leases = [
        lease("1", Some("a"), 1, "1"),
        lease("2", Some("a"), 1, "1"),
        lease("3", Some("b"), 1, "1"),
        lease("4", Some("b"), 1, "1"),
    ];
    let takes = c.plan(&leases, &held(&[]), Instant::now());
    assert_eq!(takes.len(), 1, "{takes:?}");
    assert!(takes[0].claim_from.is_some());
    // Two, one and one: nobody moves.
    let mut a = LeasePlanner::new("a", 10 * SECOND);
    let mut spread = leases.clone();
    spread[3] = lease("4", Some("c"), 1, "1");
    assert!(
        a.plan(&spread, &held(&["s/1", "s/2"]), Instant::now())
            .is_empty()
    );
    let mut b = LeasePlanner::new("b", 10 * SECOND);
    assert!(b.plan(&spread, &held(&["s/3"]), Instant::now()).is_empty());
}

#[test]
fn an_odd_shard_out_is_not_stolen_back_and_forth() {
    let mut b = LeasePlanner::new("b", 10 * SECOND);
    let leases = [
        lease("1", Some("a"), 1, "1"),
        lease("2", Some("a"), 1, "1"),
        lease("3", Some("b"), 1, "1"),
    ];
    assert!(b.plan(&leases, &held(&["s/3"]), Instant::now()).is_empty());
}

#[test]
fn children_wait_until_their_parents_reach_shard_end() {
    let mut me = LeasePlanner::new("a", 10 * SECOND);
    let parent = lease("0", None, 0, "99");
    let mut child = lease("1", None, 0, TRIM_HORIZON);
    child.parents = vec!["0".into()];
    let takes = me.plan(&[parent.clone(), child.clone()], &held(&[]), Instant::now());
    assert_eq!(keys(&takes), ["s/0"]);

    let done = lease("0", Some("a"), 4, SHARD_END);
    let takes = me.plan(&[done, child.clone()], &held(&[]), Instant::now());
    assert_eq!(keys(&takes), ["s/1"]);

    // A parent no longer in the table (trimmed) does not hold its child back.
    let takes = me.plan(&[child], &held(&[]), Instant::now());
    assert_eq!(keys(&takes), ["s/1"]);
}

#[test]
fn a_lease_left_under_my_name_by_an_earlier_run_is_taken_back_at_once() {
    let mut me = LeasePlanner::new("a", 10 * SECOND);
    let leases = [lease("1", Some("a"), 8, "5")];
    let takes = me.plan(&leases, &held(&[]), Instant::now());
    assert_eq!(
        takes,
        [Take {
            key: "s/1".into(),
            seen: 8,
            claim_from: None,
        }]
    );
    assert!(me.plan(&leases, &held(&["s/1"]), Instant::now()).is_empty());
}
