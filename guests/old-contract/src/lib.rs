//! Exports `application` as wasm-gw:wsgi@0.2.0 had it, taking only the body's handle and
//! asking for the environ: `wasm-gw serve` and `check` must refuse it and say how to rebuild.
//! Only the part of the 0.2.0 contract that tells the version is here.

wit_bindgen::generate!({
    inline: "
        package wasm-gw:wsgi@0.2.0;

        interface request {
            resource input-stream {
                read: func(size: u64) -> list<u8>;
            }
            path-info: func(input: borrow<input-stream>) -> string;
        }

        interface handler {
            use request.{input-stream};
            application: func(input: input-stream) -> result<list<u8>, string>;
        }

        world app {
            import request;
            export handler;
        }
    ",
});

struct OldContract;

impl exports::wasm_gw::wsgi::handler::Guest for OldContract {
    fn application(input: wasm_gw::wsgi::request::InputStream) -> Result<Vec<u8>, String> {
        Ok(wasm_gw::wsgi::request::path_info(&input).into_bytes())
    }
}

export!(OldContract);
