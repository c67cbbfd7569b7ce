//! Document id parsing never panics, and what parses prints back the same.
#![no_main]

use converge_proto::DocId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = s.parse::<DocId>() {
            let again: Result<DocId, _> = id.to_string().parse();
            assert_eq!(again.ok(), Some(id));
        }
    }
});
