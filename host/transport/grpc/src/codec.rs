//! The protobuf codec of `oms.v1`: tonic-prost's, except that a request body which is not a
//! valid message is INVALID_ARGUMENT. tonic-prost answers INTERNAL, which this API keeps for
//! its own faults (docs/api.md, "Errors"); a malformed body is the caller's.
//!
//! The generated client shares the codec (tonic-prost-build has one `codec_path`), so a Rust
//! client of this crate also reports an undecodable *response* as INVALID_ARGUMENT.

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

use crate::status;

/// [`ProstCodec`] with [`OmsDecoder`] for decoding.
#[derive(Debug, Clone)]
pub struct OmsCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for OmsCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for OmsCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = OmsDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        OmsDecoder {
            _message: std::marker::PhantomData,
        }
    }
}

/// Decodes `U`; a protobuf decode error (bad wire type, truncated field, invalid UTF-8 in a
/// string, ...) becomes INVALID_ARGUMENT on field `request`.
#[derive(Debug, Clone)]
pub struct OmsDecoder<U> {
    _message: std::marker::PhantomData<U>,
}

impl<U: Message + Default> Decoder for OmsDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| status::malformed_request(&e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
