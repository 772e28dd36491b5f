//! Imports an interface wasm-gw does not provide and exports no handler, so `wasm-gw serve`
//! must refuse it at startup and name what is missing.

wit_bindgen::generate!({
    inline: "
        package test:mismatch;

        interface clock-tower {
            ring: func() -> u32;
        }

        world mismatch {
            import clock-tower;
            export run: func() -> u32;
        }
    ",
});

struct Mismatch;

impl Guest for Mismatch {
    fn run() -> u32 {
        test::mismatch::clock_tower::ring()
    }
}

export!(Mismatch);
