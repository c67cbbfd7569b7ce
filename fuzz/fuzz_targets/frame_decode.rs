//! Frame decoding never panics, and a frame that decodes re-encodes to a frame that decodes
//! to the same message.
#![no_main]

use converge_proto::{
    DEFAULT_MAX_FRAME_BYTES, MAX_FRAME_CEILING, decode_client, decode_server, encode_client,
    encode_server,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_client(data, DEFAULT_MAX_FRAME_BYTES) {
        let again = encode_client(&msg).expect("a decoded message encodes");
        assert_eq!(decode_client(&again, MAX_FRAME_CEILING).ok(), Some(msg));
    }
    if let Ok(msg) = decode_server(data, MAX_FRAME_CEILING) {
        let again = encode_server(&msg).expect("a decoded message encodes");
        assert_eq!(decode_server(&again, MAX_FRAME_CEILING).ok(), Some(msg));
    }
});
