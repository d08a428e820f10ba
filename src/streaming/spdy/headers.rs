//! SPDY/3 header blocks: a count, then length-prefixed name/value pairs (all
//! 32-bit big-endian), deflated with the SPDY dictionary. Each direction of a
//! connection is one zlib stream, each block ends with a sync flush.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dict::DICTIONARY;

/// Larger header blocks are refused; Kubernetes sends a handful of short headers.
const MAX_HEADER_BLOCK: usize = 64 << 10;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The first value of `name` (header names are lower case on the wire).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn to_block(&self) -> Vec<u8> {
        let mut out = (self.0.len() as u32).to_be_bytes().to_vec();
        for (k, v) in &self.0 {
            for s in [k.to_ascii_lowercase().as_str(), v.as_str()] {
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        out
    }

    fn from_block(block: &[u8]) -> Result<Headers, HeaderError> {
        let mut at = 0;
        let next = |at: &mut usize| -> Result<String, HeaderError> {
            let len = block.get(*at..*at + 4).ok_or(HeaderError::Truncated)?;
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let s = block.get(*at + 4..*at + 4 + len).ok_or(HeaderError::Truncated)?;
            *at += 4 + len;
            String::from_utf8(s.to_vec()).map_err(|_| HeaderError::NotUtf8)
        };
        let count = block.get(..4).ok_or(HeaderError::Truncated)?;
        let count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]) as usize;
        at += 4;
        let mut pairs = Vec::new();
        for _ in 0..count {
            let name = next(&mut at)?;
            let value = next(&mut at)?;
            // Several values of one name are joined with NUL.
            pairs.extend(value.split('\0').map(|v| (name.clone(), v.to_string())));
        }
        Ok(Headers(pairs))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("header block is truncated")]
    Truncated,
    #[error("header block is not UTF-8")]
    NotUtf8,
    #[error("header block exceeds {MAX_HEADER_BLOCK} bytes")]
    TooLarge,
    #[error("header block does not inflate: {0}")]
    Inflate(String),
}

/// The sending side of a connection's header compression.
pub struct HeaderCompressor(Compress);

impl Default for HeaderCompressor {
    fn default() -> Self {
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(&DICTIONARY).expect("a fresh deflate stream accepts a dictionary");
        HeaderCompressor(c)
    }
}

impl HeaderCompressor {
    pub fn compress(&mut self, headers: &Headers) -> Vec<u8> {
        let input = headers.to_block();
        let mut out = Vec::new();
        let start = self.0.total_in();
        loop {
            out.reserve(input.len() + 128);
            let used = (self.0.total_in() - start) as usize;
            self.0.compress_vec(&input[used..], &mut out, FlushCompress::Sync).expect("deflate of an in-memory buffer");
            // The sync flush is complete once all input is in and output room is left over.
            if (self.0.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

/// The receiving side of a connection's header compression.
pub struct HeaderDecompressor(Decompress);

impl Default for HeaderDecompressor {
    fn default() -> Self {
        HeaderDecompressor(Decompress::new(true))
    }
}

impl HeaderDecompressor {
    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let start = self.0.total_in();
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(HeaderError::TooLarge);
                }
                out.reserve(out.len());
            }
            let used = (self.0.total_in() - start) as usize;
            match self.0.decompress_vec(&block[used..], &mut out, FlushDecompress::Sync) {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0.set_dictionary(&DICTIONARY).map_err(|e| HeaderError::Inflate(e.to_string()))?;
                }
                Err(e) => return Err(HeaderError::Inflate(e.to_string())),
            }
            if (self.0.total_in() - start) as usize == block.len() && out.len() < out.capacity() {
                break;
            }
        }
        Headers::from_block(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        Headers(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn blocks_round_trip_across_one_zlib_stream() {
        let (mut c, mut d) = (HeaderCompressor::default(), HeaderDecompressor::default());
        let first = headers(&[("streamtype", "error")]);
        let second = headers(&[("streamtype", "stdout"), ("x-extra", "1")]);
        let a = c.compress(&first);
        let b = c.compress(&second);
        // The first block names the SPDY dictionary (FDICT, DICTID 0xe3c6a7c2).
        assert_eq!(a[1] & 0x20, 0x20);
        assert_eq!(a[2..6], [0xe3, 0xc6, 0xa7, 0xc2]);
        assert_eq!(d.decompress(&a).unwrap(), first);
        assert_eq!(d.decompress(&b).unwrap(), second);
        assert_eq!(d.decompress(&c.compress(&Headers::default())).unwrap(), Headers::default());
    }

    #[test]
    fn names_are_lower_case_and_nul_separates_values() {
        let mut d = HeaderDecompressor::default();
        let block = HeaderCompressor::default().compress(&headers(&[("StreamType", "a\0b")]));
        assert_eq!(d.decompress(&block).unwrap(), headers(&[("streamtype", "a"), ("streamtype", "b")]));
    }

    #[test]
    fn hand_made_uncompressed_block_parses() {
        let block = [0, 0, 0, 1, 0, 0, 0, 4, b'p', b'o', b'r', b't', 0, 0, 0, 2, b'8', b'0'];
        assert_eq!(Headers::from_block(&block).unwrap().get("PORT"), Some("80"));
        assert_eq!(Headers::from_block(&block[..10]), Err(HeaderError::Truncated));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(HeaderDecompressor::default().decompress(&[1, 2, 3, 4]).is_err());
    }
}
