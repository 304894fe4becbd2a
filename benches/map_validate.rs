//! Map + translate + validate of realistic sales order lines, in records/s on one core; and the
//! consumer's whole per-record path from the message bytes (decode + map), with the record
//! decoded as the consumer does (borrowing from the bytes) and, for comparison, into a
//! `serde_json::Value` as it did before.
//! Run: cargo bench --bench map_validate

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowplane::sim::erp::sales_order_line;
use flowplane::worker::quality::Facts;
use flowplane::worker::sample;
use flowplane::worker::transform::{Plan, Record};
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
    let payloads: Vec<Vec<u8>> = records()
        .iter()
        .map(|r| serde_json::to_vec(r).expect("a record serialises"))
        .collect();
    let decoded: Vec<Record> = payloads
        .iter()
        .map(|p| serde_json::from_slice(p).expect("valid JSON"))
        .collect();
    let mut buffer = Vec::with_capacity(512 * payloads.len());
    let mut facts = Facts::default();
    let mut group = c.benchmark_group("worker");
    group.throughput(Throughput::Elements(payloads.len() as u64));
    group.bench_function("map_validate_order_line", |b| {
        b.iter(|| {
            buffer.clear();
            for record in &decoded {
                plan.map_record(record, &mut buffer, &mut facts)
                    .expect("valid sample record");
            }
            std::hint::black_box(&buffer);
        })
    });
    group.bench_function("decode_map_validate_order_line", |b| {
        b.iter(|| {
            buffer.clear();
            for payload in &payloads {
                let record: Record = serde_json::from_slice(payload).expect("valid JSON");
                plan.map_record(&record, &mut buffer, &mut facts)
                    .expect("valid sample record");
            }
            std::hint::black_box(&buffer);
        })
    });
    // What the consumer spent per record before mapping, when it decoded into a Value.
    group.bench_function("decode_into_value_only", |b| {
        b.iter(|| {
            for payload in &payloads {
                let record: Value = serde_json::from_slice(payload).expect("valid JSON");
                std::hint::black_box(&record);
            }
        })
    });
    group.bench_function("decode_borrowed_only", |b| {
        b.iter(|| {
            for payload in &payloads {
                let record: Record = serde_json::from_slice(payload).expect("valid JSON");
                std::hint::black_box(&record);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, map_validate);
criterion_main!(benches);
