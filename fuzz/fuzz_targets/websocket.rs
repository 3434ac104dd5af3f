#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentwatch::fuzzing::websocket(data));
