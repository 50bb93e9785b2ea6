//! Config loading: a node's `impush.toml` is read with figment into `impush_server::Config` and
//! validated. Whatever the text, loading must end in a config or an error, never a panic, and
//! the error must be the one line naming the key that `impush` prints.
#![no_main]

use figment::{
    providers::{Format, Toml},
    Figment,
};
use impush_server::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Figment::new().merge(Toml::string(text)).extract::<Config>() {
        Ok(config) => {
            if let Err(e) = config.validate() {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "multi-line error: {msg}");
            } else {
                let _ = config.helper_config();
            }
        }
        Err(e) => {
            let msg = impush_core::config::describe(&e);
            assert!(!msg.contains('\n'), "multi-line error: {msg}");
        }
    }
});
