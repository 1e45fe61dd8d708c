use super::*;
use crate::aws::moto;

fn shard(id: &str) -> ShardInfo {
    ShardInfo {
        shard_id: id.into(),
        parents: Vec::new(),
        hash_range: None,
    }
}

fn owners(leases: &[Lease]) -> Vec<Option<&str>> {
    leases.iter().map(|l| l.owner.as_deref()).collect()
}

/// Takes (or claims) what `planner` says, as worker `me`; the keys and tokens taken.
async fn take_planned(
    table: &LeaseTable,
    planner: &mut LeasePlanner,
    me: &str,
    held: &HashMap<String, String>,
    now: Instant,
) -> Vec<(String, String)> {
    let leases = table.list().await.unwrap();
    let keys: HashSet<String> = held.keys().cloned().collect();
    let mut taken = Vec::new();
    for take in planner.plan(&leases, &keys, now) {
        if let Some(owner) = &take.claim_from {
            assert!(table.claim(&take.key, owner, me).await.unwrap());
            continue;
        }
        let token = format!("{me}-{}", uuid::Uuid::now_v7());
        let lease = table.take(&take.key, take.seen, me, &token).await.unwrap();
        let lease = lease.expect("nobody else moved");
        assert_eq!(lease.token.as_deref(), Some(token.as_str()));
        taken.push((take.key, token));
    }
    taken
}

#[actix_rt::test]
async fn workers_split_the_shards_and_fencing_stops_the_one_that_lost() {
    let client = aws_sdk_dynamodb::Client::new(&moto::config().await);
    let name = moto::unique_name("leases");
    LeaseTable::create(&client, &name).await.unwrap();
    let table = LeaseTable::new(client.clone(), &name, "calls");
    let shards: Vec<ShardInfo> = (0..4).map(|n| shard(&format!("shardId-{n}"))).collect();
    table.add_missing(&shards, TRIM_HORIZON).await.unwrap();
    // Adding again changes nothing; another stream's leases stay apart.
    table.add_missing(&shards[..1], "42").await.unwrap();
    LeaseTable::new(client.clone(), &name, "other")
        .add_missing(&shards[..1], TRIM_HORIZON)
        .await
        .unwrap();
    let leases = table.list().await.unwrap();
    assert_eq!(leases.len(), 4);
    assert!(
        leases
            .iter()
            .all(|l| l.checkpoint == TRIM_HORIZON && l.owner.is_none())
    );

    let t0 = Instant::now();
    let duration = Duration::from_secs(10);
    let mut a = LeasePlanner::new("a", duration);
    let mut a_held: HashMap<String, String> =
        take_planned(&table, &mut a, "a", &HashMap::new(), t0)
            .await
            .into_iter()
            .collect();
    assert_eq!(a_held.len(), 4, "alone, a takes every shard");

    // b joins and claims one lease per round; a hands each over on its next renewal,
    // and its checkpoints on what it gave back are refused from then on.
    let mut b = LeasePlanner::new("b", duration);
    let mut b_held = HashMap::new();
    for _ in 0..4 {
        b_held.extend(take_planned(&table, &mut b, "b", &b_held, t0).await);
        for (key, token) in a_held.clone() {
            match table.renew(&key, &token).await.unwrap() {
                Renewal::Kept => {}
                Renewal::Claimed(by) => {
                    assert_eq!(by, "b");
                    assert!(table.release(&key, &token).await.unwrap());
                    assert!(!table.checkpoint(&key, &token, "77").await.unwrap());
                    a_held.remove(&key);
                }
                Renewal::Lost => panic!("{key} was taken from a live owner"),
            }
        }
    }
    assert_eq!((a_held.len(), b_held.len()), (2, 2));
    let leases = table.list().await.unwrap();
    let a_count = owners(&leases).iter().filter(|o| **o == Some("a")).count();
    assert_eq!(a_count, 2);
    assert!(leases.iter().all(|l| l.claimant.is_none()), "{leases:#?}");
    let (key, token) = b_held.iter().next().unwrap();
    assert!(table.checkpoint(key, token, "77").await.unwrap());
    let lease = table
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|l| &l.key == key)
        .unwrap();
    assert_eq!(lease.checkpoint, "77");

    // b goes silent: once its counters have stood still for a lease duration on a's
    // clock, a takes its leases back, checkpoint and all.
    assert!(
        take_planned(&table, &mut a, "a", &a_held, t0 + duration / 2)
            .await
            .is_empty()
    );
    let back = take_planned(&table, &mut a, "a", &a_held, t0 + duration * 2).await;
    assert_eq!(back.len(), 2);
    let leases = table.list().await.unwrap();
    assert_eq!(owners(&leases), [Some("a"); 4]);
    assert!(leases.iter().any(|l| l.checkpoint == "77"));
    assert_eq!(
        table.renew(key, token).await.unwrap(),
        Renewal::Lost,
        "b's token is dead"
    );

    // A lease given back is free at once.
    let (key, token) = back[0].clone();
    assert!(table.release(&key, &token).await.unwrap());
    let free = table
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.key == key)
        .unwrap();
    assert_eq!((free.owner, free.token), (None, None));
    assert!(!table.release(&key, &token).await.unwrap());
}
