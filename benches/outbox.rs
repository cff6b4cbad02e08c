//! How fast the outbox writes actions durably: one action per commit, and a decision
//! cycle's worth (100 targets) per commit. Each commit is fsynced, so this measures the
//! disk as much as the code. And how fast a page deep in a listing is read: the skipped
//! deliveries are passed over, not loaded.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prescale::act::outbox::Outbox;
use prescale::act::{Action, RebalanceAction};

fn actions(seq: &mut i64, n: usize) -> Vec<Action> {
    *seq += 1;
    (0..n)
        .map(|i| {
            Action::Rebalance(RebalanceAction {
                target: format!("t{i}"),
                weights: BTreeMap::from([("10.0.0.1:80".to_owned(), 100)]),
                // Distinct content, so that no action is left out as a duplicate.
                issued_at: *seq,
            })
        })
        .collect()
}

fn enqueue(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let outbox = Outbox::open(dir.path()).expect("outbox");
    let mut seq = 0;
    let mut group = c.benchmark_group("outbox_enqueue");
    for n in [1usize, 100] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("{n}_per_commit"), |b| {
            b.iter(|| {
                let batch = actions(&mut seq, n);
                black_box(rt.block_on(outbox.enqueue(batch)).expect("enqueue"))
            })
        });
    }
    group.finish();
}

fn list_page(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let outbox = Outbox::open(dir.path()).expect("outbox");
    let mut seq = 0;
    // 10,000 deliveries, 100 per target.
    for _ in 0..100 {
        rt.block_on(outbox.enqueue(actions(&mut seq, 100)))
            .expect("enqueue");
    }
    let mut group = c.benchmark_group("outbox_list_page");
    for offset in [0usize, 9_900] {
        group.bench_function(format!("offset_{offset}_limit_50"), |b| {
            b.iter(|| {
                let page = outbox.list_page(None, None, offset, 50);
                black_box(rt.block_on(page).expect("a page"))
            })
        });
        group.bench_function(
            format!("one_target_offset_{}_limit_50", offset / 100),
            |b| {
                b.iter(|| {
                    let page = outbox.list_page(None, Some("t7".to_owned()), offset / 100, 50);
                    black_box(rt.block_on(page).expect("a page"))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, enqueue, list_page);
criterion_main!(benches);
