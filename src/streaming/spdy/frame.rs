//! SPDY/3 frames: an 8-byte header (control bit, version and type, or a data
//! frame's stream id; flags; 24-bit length) and a body. Header blocks stay
//! compressed here: their zlib state spans the whole connection.

pub const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;
/// Larger frames are refused: Kubernetes clients send at most 32 KiB of data at once.
pub const MAX_FRAME: usize = 1 << 20;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used by the server.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_CANCEL: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: u32,
        flags: u8,
        data: Vec<u8>,
    },
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        header_block: Vec<u8>,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        header_block: Vec<u8>,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        header_block: Vec<u8>,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A control frame of a type this server does not know; SPDY says to ignore it.
    Unknown {
        kind: u16,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("SPDY version {0} is not supported (only 3)")]
    Version(u16),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("{kind} frame body of {len} bytes is malformed")]
    Malformed { kind: &'static str, len: usize },
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Frame {
    /// Parses one frame from the start of `buf`: Ok(None) when more bytes are
    /// needed, else the frame and how many bytes it used.
    pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let flags = buf[4];
        let len = (be32(&buf[4..8]) & 0x00ff_ffff) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let body = &buf[8..8 + len];
        let frame = if buf[0] & 0x80 == 0 {
            Frame::Data { stream_id: be32(buf) & 0x7fff_ffff, flags, data: body.to_vec() }
        } else {
            let version = u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff;
            if version != VERSION {
                return Err(FrameError::Version(version));
            }
            Frame::control(u16::from_be_bytes([buf[2], buf[3]]), flags, body)?
        };
        Ok(Some((frame, 8 + len)))
    }

    fn control(kind: u16, flags: u8, body: &[u8]) -> Result<Frame, FrameError> {
        let need = |name: &'static str, min: usize| {
            if body.len() < min {
                Err(FrameError::Malformed { kind: name, len: body.len() })
            } else {
                Ok(())
            }
        };
        let id = |at: usize| be32(&body[at..]) & 0x7fff_ffff;
        Ok(match kind {
            SYN_STREAM => {
                need("SYN_STREAM", 10)?;
                Frame::SynStream {
                    stream_id: id(0),
                    associated_to: id(4),
                    priority: body[8] >> 5,
                    flags,
                    header_block: body[10..].to_vec(),
                }
            }
            SYN_REPLY => {
                need("SYN_REPLY", 4)?;
                Frame::SynReply { stream_id: id(0), flags, header_block: body[4..].to_vec() }
            }
            RST_STREAM => {
                need("RST_STREAM", 8)?;
                Frame::RstStream { stream_id: id(0), status: be32(&body[4..]) }
            }
            SETTINGS => {
                need("SETTINGS", 4)?;
                let count = be32(body) as usize;
                if body.len() != 4 + count.saturating_mul(8) {
                    return Err(FrameError::Malformed { kind: "SETTINGS", len: body.len() });
                }
                let entries = body[4..].chunks_exact(8).map(|e| (e[0], be32(e) & 0x00ff_ffff, be32(&e[4..]))).collect();
                Frame::Settings { flags, entries }
            }
            PING => {
                need("PING", 4)?;
                Frame::Ping { id: be32(body) }
            }
            GOAWAY => {
                need("GOAWAY", 8)?;
                Frame::GoAway { last_good_stream_id: id(0), status: be32(&body[4..]) }
            }
            HEADERS => {
                need("HEADERS", 4)?;
                Frame::Headers { stream_id: id(0), flags, header_block: body[4..].to_vec() }
            }
            WINDOW_UPDATE => {
                need("WINDOW_UPDATE", 8)?;
                Frame::WindowUpdate { stream_id: id(0), delta: be32(&body[4..]) & 0x7fff_ffff }
            }
            kind => Frame::Unknown { kind },
        })
    }

    /// The frame on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let control = |kind: u16, flags: u8, body: &[&[u8]]| {
            let len: usize = body.iter().map(|b| b.len()).sum();
            let mut out = Vec::with_capacity(8 + len);
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&((flags as u32) << 24 | len as u32).to_be_bytes());
            body.iter().for_each(|b| out.extend_from_slice(b));
            out
        };
        let be = |v: u32| v.to_be_bytes();
        match self {
            Frame::Data { stream_id, flags, data } => {
                let mut out = Vec::with_capacity(8 + data.len());
                out.extend_from_slice(&be(stream_id & 0x7fff_ffff));
                out.extend_from_slice(&be((*flags as u32) << 24 | data.len() as u32));
                out.extend_from_slice(data);
                out
            }
            Frame::SynStream { stream_id, associated_to, priority, flags, header_block } => {
                control(SYN_STREAM, *flags, &[&be(*stream_id), &be(*associated_to), &[priority << 5, 0], header_block])
            }
            Frame::SynReply { stream_id, flags, header_block } => {
                control(SYN_REPLY, *flags, &[&be(*stream_id), header_block])
            }
            Frame::RstStream { stream_id, status } => control(RST_STREAM, 0, &[&be(*stream_id), &be(*status)]),
            Frame::Settings { flags, entries } => {
                let mut body = be(entries.len() as u32).to_vec();
                for (entry_flags, id, value) in entries {
                    body.extend_from_slice(&be((*entry_flags as u32) << 24 | id));
                    body.extend_from_slice(&be(*value));
                }
                control(SETTINGS, *flags, &[&body])
            }
            Frame::Ping { id } => control(PING, 0, &[&be(*id)]),
            Frame::GoAway { last_good_stream_id, status } => {
                control(GOAWAY, 0, &[&be(*last_good_stream_id), &be(*status)])
            }
            Frame::Headers { stream_id, flags, header_block } => {
                control(HEADERS, *flags, &[&be(*stream_id), header_block])
            }
            Frame::WindowUpdate { stream_id, delta } => control(WINDOW_UPDATE, 0, &[&be(*stream_id), &be(*delta)]),
            Frame::Unknown { kind } => control(*kind, 0, &[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_hand_made_data_frame() {
        let wire = [0, 0, 0, 5, FLAG_FIN, 0, 0, 3, b'a', b'b', b'c', 0xff];
        let (frame, used) = Frame::parse(&wire).unwrap().unwrap();
        assert_eq!(used, 11);
        assert_eq!(frame, Frame::Data { stream_id: 5, flags: FLAG_FIN, data: b"abc".to_vec() });
        assert_eq!(frame.encode(), wire[..11]);
    }

    #[test]
    fn parses_a_hand_made_syn_stream() {
        let wire = [0x80, 3, 0, 1, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0, 0xde, 0xad];
        let (frame, used) = Frame::parse(&wire).unwrap().unwrap();
        assert_eq!(used, wire.len());
        let want =
            Frame::SynStream { stream_id: 1, associated_to: 0, priority: 3, flags: 0, header_block: vec![0xde, 0xad] };
        assert_eq!(frame, want);
        assert_eq!(frame.encode(), wire);
    }

    #[test]
    fn control_frames_round_trip() {
        let frames = [
            Frame::SynReply { stream_id: 3, flags: FLAG_FIN, header_block: vec![1, 2, 3] },
            Frame::RstStream { stream_id: 7, status: RST_CANCEL },
            Frame::Settings { flags: 0, entries: vec![(0, 7, 65536), (1, 4, 100)] },
            Frame::Ping { id: 42 },
            Frame::GoAway { last_good_stream_id: 9, status: 0 },
            Frame::Headers { stream_id: 1, flags: 0, header_block: vec![] },
            Frame::WindowUpdate { stream_id: 1, delta: 4096 },
        ];
        for frame in frames {
            let wire = frame.encode();
            assert_eq!(Frame::parse(&wire).unwrap(), Some((frame.clone(), wire.len())), "{frame:?}");
        }
    }

    #[test]
    fn ping_is_exact_on_the_wire() {
        assert_eq!(Frame::Ping { id: 1 }.encode(), [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
    }

    #[test]
    fn partial_input_waits_for_more() {
        let wire = Frame::Ping { id: 1 }.encode();
        for cut in 0..wire.len() {
            assert_eq!(Frame::parse(&wire[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(Frame::parse(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]), Err(FrameError::Version(2)));
        assert_eq!(
            Frame::parse(&[0x80, 3, 0, 3, 0, 0, 0, 2, 0, 0]).unwrap_err().to_string(),
            "RST_STREAM frame body of 2 bytes is malformed"
        );
        assert!(matches!(Frame::parse(&[0, 0, 0, 1, 0, 0x20, 0, 0]), Err(FrameError::TooLarge(_))));
        let unknown = [0x80, 3, 0, 0x20, 0, 0, 0, 1, 9];
        assert_eq!(Frame::parse(&unknown).unwrap(), Some((Frame::Unknown { kind: 0x20 }, 9)));
    }
}
