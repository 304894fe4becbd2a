//! Map + translate + validate of realistic sales order lines, in records/s on one core.
//! Run: cargo bench --bench map_validate

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowplane::sim::erp::sales_order_line;
use flowplane::worker::sample;
use flowplane::worker::transform::Plan;
use serde_json::Value;

fn records() -> Vec<Value> {
    (0..1000u32)
        .map(|i| {
            let mut line = sales_order_line(i, None);
            line.insert(
                "LastChangeDateTime".into(),
                Value::String(format!("2024-03-01T12:00:{:02}.{:03}Z", i % 60, i % 1000)),
            );
            Value::Object(line)
        })
        .collect()
}

fn map_validate(c: &mut Criterion) {
    let plan = Plan::compile(&sample::mapping(), &sample::contract()).expect("sample plan");
    let records = records();
    let mut buffer = Vec::with_capacity(512 * records.len());
    let mut group = c.benchmark_group("worker");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("map_validate_order_line", |b| {
        b.iter(|| {
            buffer.clear();
            for record in &records {
                plan.map_into(record, &mut buffer)
                    .expect("valid sample record");
            }
            std::hint::black_box(&buffer);
        })
    });
    group.finish();
}

criterion_group!(benches, map_validate);
criterion_main!(benches);
