//! Trace headers: W3C `traceparent`/`tracestate` and AWS's `X-Amzn-Trace-Id` are
//! passed on as they come; when a request has neither (or only one), the gateway
//! creates the missing ones with the same trace id (X-Ray's `1-{8 hex}-{24 hex}` root
//! is a W3C trace id split in two), sampled as configured.

#[derive(Debug, Clone, Copy)]
pub struct Trace {
    /// The trace id, 32 lower-case hex digits.
    pub id: [u8; 32],
    /// The gateway's span id, 16 hex digits (parent of the integration's).
    pub span: [u8; 16],
    pub sampled: bool,
    /// The caller's span (the incoming `traceparent`'s parent id).
    pub parent: Option<[u8; 16]>,
    /// Which headers the upstream request gets from the gateway.
    pub add_w3c: bool,
    pub add_amzn: bool,
}

fn is_hex(b: &[u8]) -> bool {
    b.iter().all(|c| c.is_ascii_hexdigit())
}

fn hex_into(out: &mut [u8], mut v: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b"0123456789abcdef"[(v & 15) as usize];
        v >>= 4;
    }
}

/// The request's trace, or `None` when it has none and none is to be created.
pub fn of_request(
    headers: &[httparse::Header<'_>],
    plan: &TracingPlan,
    now_s: u64,
    random: impl Fn() -> u64,
) -> Option<Trace> {
    let mut id = None;
    let mut sampled = None;
    let mut parent = None;
    let w3c = crate::http::parse::header(headers, "traceparent");
    if let Some(v) = w3c {
        // 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>
        if v.len() >= 55 && v[2] == b'-' && v[35] == b'-' && v[52] == b'-' && is_hex(&v[3..35]) {
            let mut t = [0u8; 32];
            t.copy_from_slice(&v[3..35]);
            t.make_ascii_lowercase();
            id = Some(t);
            sampled = Some(v[54] & 1 == 1);
            if is_hex(&v[36..52]) {
                let mut p = [0u8; 16];
                p.copy_from_slice(&v[36..52]);
                p.make_ascii_lowercase();
                parent = Some(p);
            }
        }
    }
    let amzn = crate::http::parse::header(headers, "x-amzn-trace-id");
    if let Some(v) = amzn {
        for part in v.split(|&b| b == b';') {
            let part = part.trim_ascii();
            if let Some(root) = part.strip_prefix(b"Root=1-") {
                if id.is_none()
                    && root.len() == 33
                    && root[8] == b'-'
                    && is_hex(&root[..8])
                    && is_hex(&root[9..])
                {
                    let mut t = [0u8; 32];
                    t[..8].copy_from_slice(&root[..8]);
                    t[8..].copy_from_slice(&root[9..]);
                    t.make_ascii_lowercase();
                    id = Some(t);
                }
            } else if let Some(s) = part.strip_prefix(b"Sampled=") {
                sampled = sampled.or(Some(s == b"1"));
            }
        }
    }
    if id.is_none() && !plan.create {
        return None;
    }
    let id = id.unwrap_or_else(|| {
        let mut t = [0u8; 32];
        hex_into(&mut t[..8], now_s);
        hex_into(&mut t[8..20], random());
        hex_into(&mut t[20..], random());
        t
    });
    let mut span = [0u8; 16];
    hex_into(&mut span, random() | 1);
    let sampled = sampled.unwrap_or_else(|| (random() as u32) < plan.sample_below);
    Some(Trace {
        id,
        span,
        sampled,
        parent,
        add_w3c: plan.create && w3c.is_none(),
        add_amzn: plan.create && amzn.is_none(),
    })
}

impl Trace {
    /// The header lines the upstream request gets from the gateway.
    pub fn write(&self, out: &mut Vec<u8>) {
        if self.add_w3c {
            out.extend_from_slice(b"traceparent: 00-");
            out.extend_from_slice(&self.id);
            out.push(b'-');
            out.extend_from_slice(&self.span);
            out.extend_from_slice(if self.sampled { b"-01\r\n" } else { b"-00\r\n" });
        }
        if self.add_amzn {
            out.extend_from_slice(b"x-amzn-trace-id: Root=1-");
            out.extend_from_slice(&self.id[..8]);
            out.push(b'-');
            out.extend_from_slice(&self.id[8..]);
            out.extend_from_slice(if self.sampled {
                b";Sampled=1\r\n"
            } else {
                b";Sampled=0\r\n"
            });
        }
    }
}

/// Trace headers created for requests that carry none.
#[derive(Debug, Clone, Copy)]
pub struct TracingPlan {
    pub create: bool,
    /// Of `u32::MAX`: created traces below it are sampled.
    pub sample_below: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(n: &'a str, v: &'a [u8]) -> httparse::Header<'a> {
        httparse::Header { name: n, value: v }
    }

    #[test]
    fn ids_are_shared_between_the_two_formats() {
        let plan = TracingPlan {
            create: true,
            sample_below: 0,
        };
        let t = of_request(
            &[h(
                "traceparent",
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )],
            &plan,
            1,
            || 7,
        )
        .unwrap();
        assert_eq!(&t.id, b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(t.sampled && !t.add_w3c && t.add_amzn);
        let mut out = Vec::new();
        t.write(&mut out);
        assert_eq!(
            out,
            b"x-amzn-trace-id: Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Sampled=1\r\n"
        );
        let t = of_request(
            &[h(
                "X-Amzn-Trace-Id",
                b"Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0",
            )],
            &plan,
            1,
            || 7,
        )
        .unwrap();
        assert_eq!(&t.id, b"5759e988bd862e3fe1be46a994272793");
        assert!(!t.sampled && t.add_w3c && !t.add_amzn);
        // Neither: created, unsampled at rate 0.
        let t = of_request(&[], &plan, 1, || 0xabc).unwrap();
        assert!(t.add_w3c && t.add_amzn && !t.sampled);
        assert!(of_request(
            &[],
            &TracingPlan {
                create: false,
                sample_below: 0
            },
            1,
            || 1
        )
        .is_none());
    }
}
