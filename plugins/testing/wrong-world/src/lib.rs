//! Test plugin `wrong-world`: its manifest says `kind = "payment"`, but it exports a bare
//! `authorize` function instead of `oms:plugins/payment@0.1.0`. The host must refuse it at load
//! time, naming the missing export, before any call is attempted.

#[allow(unsafe_code)] // wit-bindgen's generated ABI glue is the only unsafe code here.
mod bindings {
    wit_bindgen::generate!({
        inline: "
            package oms:testing;

            world wrong-world {
                export authorize: func(order-id: string, amount-minor: s64) -> bool;
            }
        ",
    });

    use super::WrongWorld;
    export!(WrongWorld with_types_in self);
}

struct WrongWorld;

impl bindings::Guest for WrongWorld {
    fn authorize(_order_id: String, _amount_minor: i64) -> bool {
        true
    }
}
