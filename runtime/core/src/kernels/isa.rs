//! Which instruction set the kernels use: detected once, capped by `CNX_ISA` so that one
//! machine runs, tests and measures every path. A level is a set of CPU [`Features`]; every
//! precision's GEMM kernel is chosen from the table in [`super::matmul`] by the features it
//! needs, the other f32 kernels by the level's vector [`Width`].

/// The environment variable that caps the instruction set the kernels use
/// (`portable`, `avx2`, `avx-vnni`, `avx512`, `avx512-vnni`, `avx512-bf16`, `amx`), so that one
/// machine measures and tests every path.
pub const ISA_ENV: &str = "CNX_ISA";

/// Which kernels run: a named level of CPU features (ordered: a later level needs more of
/// the CPU, though a CPU may have a later one without an earlier: Ice Lake has AVX-512 VNNI
/// but not AVX-VNNI). What a level means is its [`Features`]: each precision's kernel is
/// chosen by querying them ([`super::matmul::kernel_for`]), never by matching on the level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Portable,
    /// AVX2 + FMA.
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
    /// AVX-512 VNNI and AVX512_BF16 (`vdpbf16ps`): Cooper Lake, Zen 4 and 5.
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    /// AMX tiles for bf16 (`tdpbf16ps`) and int8 (`tdpbusd`), with AVX512_BF16 beside them:
    /// Sapphire Rapids and later.
    #[cfg(target_arch = "x86_64")]
    Amx,
}

/// One CPU feature a kernel may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Feature {
    Avx2Fma = 1 << 0,
    AvxVnni = 1 << 1,
    Avx512F = 1 << 2,
    Avx512Bw = 1 << 3,
    Avx512Vnni = 1 << 4,
    Avx512Bf16 = 1 << 5,
    /// AMX tiles, with the operating system's permission to use them.
    AmxTile = 1 << 6,
    AmxBf16 = 1 << 7,
    AmxInt8 = 1 << 8,
}

/// A set of [`Feature`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(u32);

impl Features {
    pub const NONE: Features = Features(0);

    /// The set of `features`.
    pub const fn of(features: &[Feature]) -> Features {
        let mut bits = 0;
        let mut i = 0;
        while i < features.len() {
            bits |= features[i] as u32;
            i += 1;
        }
        Features(bits)
    }

    pub const fn has(self, f: Feature) -> bool {
        self.0 & f as u32 != 0
    }

    /// Whether every feature of `self` is in `other`.
    pub const fn within(self, other: Features) -> bool {
        self.0 & !other.0 == 0
    }

    pub const fn with(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }

    /// What this CPU has (and, for AMX, what the operating system lets this process use).
    pub fn cpu() -> Features {
        static CPU: std::sync::OnceLock<Features> = std::sync::OnceLock::new();
        *CPU.get_or_init(detect_cpu)
    }
}

#[cfg(target_arch = "x86_64")]
fn detect_cpu() -> Features {
    use Feature::*;
    let mut f = Vec::new();
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        f.push(Avx2Fma);
    }
    if is_x86_feature_detected!("avxvnni") {
        f.push(AvxVnni);
    }
    if is_x86_feature_detected!("avx512f") {
        f.push(Avx512F);
    }
    if is_x86_feature_detected!("avx512bw") {
        f.push(Avx512Bw);
    }
    if is_x86_feature_detected!("avx512vnni") {
        f.push(Avx512Vnni);
    }
    if is_x86_feature_detected!("avx512bf16") {
        f.push(Avx512Bf16);
    }
    if super::amx::tiles_permitted() {
        f.push(AmxTile);
        let leaf7 = super::amx::cpuid_leaf7_edx();
        // CPUID.(EAX=7, ECX=0):EDX bit 22 AMX-BF16, bit 25 AMX-INT8.
        if leaf7 & (1 << 22) != 0 {
            f.push(AmxBf16);
        }
        if leaf7 & (1 << 25) != 0 {
            f.push(AmxInt8);
        }
    }
    Features::of(&f)
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_cpu() -> Features {
    Features::NONE
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
            "{ISA_ENV}={:?} names no instruction set (expected portable, avx2, avx-vnni, avx512, avx512-vnni, avx512-bf16 or amx)",
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

    /// `portable`, `avx2`, `avx-vnni`, `avx512`, `avx512-vnni`, `avx512-bf16` or `amx` (any
    /// case).
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
            #[cfg(target_arch = "x86_64")]
            "avx512-bf16" => Some(Isa::Avx512Bf16),
            #[cfg(target_arch = "x86_64")]
            "amx" => Some(Isa::Amx),
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
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => "avx512-bf16",
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => "amx",
        }
    }

    /// Every level, lowest first.
    pub const ALL: &'static [Isa] = &[
        Isa::Portable,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16,
        #[cfg(target_arch = "x86_64")]
        Isa::Amx,
    ];

    /// The CPU features this level lets kernels use.
    pub const fn features(self) -> Features {
        use Feature::*;
        match self {
            Isa::Portable => Features::NONE,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Features::of(&[Avx2Fma]),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => Features::of(&[Avx2Fma, AvxVnni]),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Features::of(&[Avx2Fma, Avx512F]),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Features::of(&[Avx2Fma, Avx512F, Avx512Bw, Avx512Vnni]),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => Features::of(&[Avx2Fma, Avx512F, Avx512Bw, Avx512Vnni, Avx512Bf16]),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => Features::of(&[
                Avx2Fma, Avx512F, Avx512Bw, Avx512Vnni, Avx512Bf16, AmxTile, AmxBf16, AmxInt8,
            ]),
        }
    }

    /// Whether this level lets kernels use `f`.
    pub const fn has(self, f: Feature) -> bool {
        self.features().has(f)
    }

    /// The f32 kernels' width: the widest f32 vectors this level has.
    pub fn width(self) -> Width {
        #[cfg(target_arch = "x86_64")]
        {
            if self.has(Feature::Avx512F) {
                return Width::Avx512;
            }
            if self.has(Feature::Avx2Fma) {
                return Width::Avx2;
            }
        }
        Width::Portable
    }

    /// The best kernel this CPU runs, whatever `CNX_ISA` says.
    pub fn best() -> Isa {
        *Isa::available()
            .last()
            .expect("the portable kernel always runs")
    }

    /// Every level this CPU runs (for tests and benchmarks), lowest first.
    pub fn available() -> Vec<Isa> {
        let cpu = Features::cpu();
        Isa::ALL
            .iter()
            .copied()
            .filter(|isa| isa.features().within(cpu))
            .collect()
    }
}
