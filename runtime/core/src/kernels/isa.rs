//! Which instruction set the kernels use: detected once, capped by `CNX_ISA` so that one
//! machine runs, tests and measures every path. Every precision's kernels dispatch on it: the
//! f32 ones on its vector [`Width`], the int8 ones on the variant itself (VNNI or not).

/// The environment variable that caps the instruction set the kernels use
/// (`portable`, `avx2`, `avx512`), so that one machine measures and tests every path.
pub const ISA_ENV: &str = "CNX_ISA";

/// Which kernels run (ordered: a later variant needs more of the CPU, though a CPU may have
/// a later one without an earlier: Ice Lake has AVX-512 VNNI but not AVX-VNNI).
///
/// The f32 kernels come in three widths (portable loops, AVX2 + FMA, AVX-512F); the int8
/// kernels in four (portable, AVX2 `vpmaddubsw`, AVX-VNNI and AVX-512 VNNI `vpdpbusd`). A
/// variant names both: `AvxVnni` runs the AVX2 f32 kernels, `Avx512Vnni` the AVX-512 ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 + FMA with AVX-VNNI (the VEX-encoded `vpdpbusd`).
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// AVX-512F (int8 runs the AVX2 kernel: no VNNI).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512F, BW and VNNI.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

/// The f32 kernels' vector width: what every f32 kernel dispatches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Width {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// `CNX_ISA` names no instruction set cnx knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownIsa(pub String);

impl std::fmt::Display for UnknownIsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{ISA_ENV}={:?} names no instruction set (expected portable, avx2, avx-vnni, avx512 or avx512-vnni)",
            self.0
        )
    }
}

impl std::error::Error for UnknownIsa {}

impl Isa {
    /// The kernels that run: the best this CPU has, capped by `CNX_ISA` when it is set (a
    /// request above what the CPU has gets the CPU's best; an unknown name is ignored here,
    /// and refused by [`Isa::requested`], which the `cnx` binary checks first).
    pub fn detect() -> Isa {
        static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| match Isa::requested() {
            Ok(Some(cap)) => Isa::at_most(cap),
            _ => Isa::best(),
        })
    }

    /// The instruction set `CNX_ISA` asks for, if it is set.
    pub fn requested() -> Result<Option<Isa>, UnknownIsa> {
        match std::env::var(ISA_ENV) {
            Err(_) => Ok(None),
            Ok(name) if name.is_empty() => Ok(None),
            Ok(name) => Isa::from_name(&name).map(Some).ok_or(UnknownIsa(name)),
        }
    }

    /// The best kernels this CPU runs that `cap` allows.
    pub fn at_most(cap: Isa) -> Isa {
        Isa::available()
            .into_iter()
            .rev()
            .find(|&isa| isa <= cap)
            .unwrap_or(Isa::Portable)
    }

    /// `portable`, `avx2`, `avx-vnni`, `avx512` or `avx512-vnni` (any case).
    pub fn from_name(name: &str) -> Option<Isa> {
        match name.to_ascii_lowercase().as_str() {
            "portable" => Some(Isa::Portable),
            #[cfg(target_arch = "x86_64")]
            "avx2" => Some(Isa::Avx2),
            #[cfg(target_arch = "x86_64")]
            "avx-vnni" => Some(Isa::AvxVnni),
            #[cfg(target_arch = "x86_64")]
            "avx512" => Some(Isa::Avx512),
            #[cfg(target_arch = "x86_64")]
            "avx512-vnni" => Some(Isa::Avx512Vnni),
            _ => None,
        }
    }

    /// The lower-case name [`Isa::from_name`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => "avx-vnni",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx512",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// The f32 kernels' width.
    pub fn width(self) -> Width {
        match self {
            Isa::Portable => Width::Portable,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::AvxVnni => Width::Avx2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Vnni => Width::Avx512,
        }
    }

    /// The best kernel this CPU runs, whatever `CNX_ISA` says.
    pub fn best() -> Isa {
        *Isa::available()
            .last()
            .expect("the portable kernel always runs")
    }

    /// Every kernel this CPU can run (for tests and benchmarks), lowest first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2);
                if is_x86_feature_detected!("avxvnni") {
                    v.push(Isa::AvxVnni);
                }
                if is_x86_feature_detected!("avx512f") {
                    v.push(Isa::Avx512);
                    if is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vnni")
                    {
                        v.push(Isa::Avx512Vnni);
                    }
                }
            }
        }
        v
    }

    /// (MR, NR): the tile one f32 microkernel call computes.
    pub fn tile(self) -> (usize, usize) {
        match self.width() {
            Width::Portable => (4, 16),
            #[cfg(target_arch = "x86_64")]
            Width::Avx2 => (6, 16),
            #[cfg(target_arch = "x86_64")]
            Width::Avx512 => (6, 32),
        }
    }
}
