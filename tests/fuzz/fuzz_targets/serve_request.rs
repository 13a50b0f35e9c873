#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cnx_tests::fuzzing::serve_request(data));
