//! Spool files after a crash: records framed as the batcher frames them (format 1 or 2, with
//! and without ids), then torn, bit-flipped, zero-filled or extended with garbage, as a crash
//! or a bad disk leaves them. Reading them back (`spool::decode`, and `decode_records` from any
//! frame boundary as the index follower reads) never panics and never yields a record that was
//! not written: what comes back is the written records, in order, up to the damage.
#![no_main]

use arbitrary::Arbitrary;
use ccstream_fuzz::{damaged, Damage};
use libfuzzer_sys::fuzz_target;
use sinks::objects::config::{Compression, Delimiter};
use sinks::objects::record::RecordKind;
use sinks::objects::spool::{
    decode, decode_records, preamble, push_record, SpoolHeader, FORMAT_VERSION, FORMAT_VERSION_1,
};

#[derive(Debug, Arbitrary)]
enum Input {
    Written {
        v1: bool,
        key: String,
        records: Vec<(Vec<u8>, Option<u64>)>,
        damage: Vec<Damage>,
        from: u8,
    },
    Raw(Vec<u8>, u16),
}

fuzz_target!(|input: Input| {
    match input {
        Input::Raw(bytes, at) => {
            let decoded = decode(&bytes);
            assert!(decoded.valid_len <= bytes.len());
            for r in &decoded.records {
                assert!(r.end <= decoded.valid_len);
            }
            for version in [FORMAT_VERSION_1, FORMAT_VERSION] {
                let (records, _, end) = decode_records(&bytes, usize::from(at), version);
                assert!(end <= bytes.len().max(usize::from(at)));
                assert!(records.iter().all(|r| r.end <= end));
            }
        }
        Input::Written {
            v1,
            key,
            records,
            damage,
            from,
        } => written(v1, key, &records, &damage, from),
    }
});

fn written(v1: bool, key: String, records: &[(Vec<u8>, Option<u64>)], damage: &[Damage], from: u8) {
    let version = if v1 { FORMAT_VERSION_1 } else { FORMAT_VERSION };
    let header = SpoolHeader {
        version,
        key,
        created_ms: 1_700_000_000_000,
        kind: RecordKind::Observations,
        delimiter: Delimiter::Newline,
        compression: Compression::None,
    };
    // The batcher never spools an empty record: a record is a JSON object.
    let records: Vec<(&[u8], Option<u64>)> = records
        .iter()
        .filter(|(r, _)| !r.is_empty())
        .map(|(r, id)| (r.as_slice(), if v1 { None } else { *id }))
        .collect();
    let mut file = preamble(&header).expect("header");
    let header_end = file.len();
    let mut boundaries = vec![file.len()];
    for (record, id) in &records {
        push_record(&mut file, version, record, *id);
        boundaries.push(file.len());
    }
    let written = file;
    let damage = damaged(&written, damage);
    let file = &damage.bytes;
    // The first byte that is not what was written (flips that cancel out are no damage).
    let first_damage = written
        .iter()
        .zip(file)
        .position(|(a, b)| a != b)
        .unwrap_or(written.len().min(file.len()));

    let decoded = decode(file);
    match &decoded.header {
        Ok(h) => assert_eq!(h, &header),
        Err(_) => {
            assert!(first_damage < header_end, "an intact header was refused");
            assert!(decoded.records.is_empty());
            return;
        }
    }
    // Every frame that ends before the damage comes back as written; no frame comes back that
    // spans the damage (it would be a changed record) unless it reaches into appended garbage;
    // frames after it can only be well-formed frames in bytes that no write of ours produced
    // (appended garbage), which the reader cannot tell from a write.
    let intact = boundaries[1..]
        .iter()
        .filter(|&&b| b <= first_damage)
        .count();
    assert!(decoded.records.len() >= intact, "an intact record was lost");
    for (i, (range, id)) in decoded.records.iter().zip(&decoded.ids).enumerate() {
        if i < intact {
            assert_eq!(
                (&file[range.clone()], *id),
                records[i],
                "record {i} came back changed"
            );
        } else {
            // A record ends its frame, and frames follow each other.
            let frame_start = match i {
                0 => header_end,
                _ => decoded.records[i - 1].end,
            };
            assert!(
                frame_start >= first_damage || damage.reaches_garbage(frame_start..range.end),
                "a record that was not written came back: frame {i} spans the damage at {first_damage}"
            );
        }
    }

    // From any frame boundary (the index follower's cursor), the records from there on.
    let k = usize::from(from) % boundaries.len();
    if first_damage == written.len() {
        let (ranges, ids, _) = decode_records(file, boundaries[k], version);
        let tail: Vec<(&[u8], Option<u64>)> = ranges
            .iter()
            .zip(&ids)
            .map(|(r, id)| (&file[r.clone()], *id))
            .collect();
        assert_eq!(&tail[..records.len() - k], &records[k..]);
    }
}
