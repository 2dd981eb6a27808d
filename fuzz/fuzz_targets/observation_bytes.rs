//! A shadow update as raw bytes, through the ingest path: parse, evaluate, build the record
//! (properties in `ccstream_fuzz::observe`). The first byte picks the thing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&thing, raw)) = data.split_first() else {
        return;
    };
    ccstream_fuzz::observe(raw, thing);
});
