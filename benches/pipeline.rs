//! Render + validate + inline + build of the repository's example set, one core.
//!
//! `cargo bench --bench pipeline` prints time per message for each template and for the
//! whole set; messages per second is the inverse of the `set` figure times the number
//! of renders in it.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use missive::Mailer;

fn corpus(mailer: &Mailer) -> Vec<(String, serde_json::Value)> {
    let mut corpus = Vec::new();
    for name in mailer.template_names() {
        let mut index = 0;
        while let Ok(data) = mailer.example(&name, index) {
            corpus.push((name.clone(), data));
            index += 1;
        }
    }
    corpus
}

fn pipeline(c: &mut Criterion) {
    let (mailer, _) = Mailer::for_tests(concat!(env!("CARGO_MANIFEST_DIR"), "/templates"));
    let corpus = corpus(&mailer);

    let mut group = c.benchmark_group("render+inline+mime");
    group.throughput(Throughput::Elements(corpus.len() as u64));
    group.bench_function("set", |b| {
        b.iter(|| {
            for (name, data) in &corpus {
                black_box(mailer.template(name).data(data).eml().expect("renders"));
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("per-template");
    group.throughput(Throughput::Elements(1));
    for (name, data) in corpus.iter().filter(|(n, _)| n != "welcome") {
        let id = format!("{name}/{}", data.to_string().len());
        group.bench_function(id, |b| {
            b.iter(|| black_box(mailer.template(name).data(data).eml().expect("renders")))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("stages");
    let (name, data) = corpus
        .iter()
        .find(|(n, _)| n == "orders/receipt")
        .expect("receipt example");
    group.bench_function("render (no MIME)", |b| {
        b.iter(|| black_box(mailer.template(name).data(data).render().expect("renders")))
    });
    group.bench_function("render+MIME", |b| {
        b.iter(|| black_box(mailer.template(name).data(data).eml().expect("renders")))
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
