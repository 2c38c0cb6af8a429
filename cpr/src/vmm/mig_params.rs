//! Mainline's migration parameters (`MigrationParameters`, QEMU `migration/options.c`):
//! QEMU's types, defaults and range checks, so `migrate-set-parameters` refuses what QEMU
//! refuses, with QEMU's messages, and changes nothing when it refuses.
//!
//! QEMU reads each value with its QAPI type first (a `uint8` above 255 is `Parameter 'x'
//! expects uint8`; a negative `uint64` or `size` is taken modulo 2^64, for backward
//! compatibility), then checks the merged parameters (`migrate_params_check`) with its own,
//! underscored names (`Parameter 'downtime_limit' expects ...`). Both steps are kept here.
//!
//! The same table serves QEMU's `-global migration.<property>=<value>` (`--global` here):
//! QEMU's property names (`x-downtime-limit`, `mode`, `x-ignore-shared`...) map onto the
//! same parameters and capabilities, through the same checks.

use super::api::MigrationCapability;
use super::migration::MigMode;

/// QEMU's `MAX_MIGRATE_DOWNTIME` as its message prints it (`stringify` of the macro).
const MAX_DOWNTIME_MS: u64 = 2000 * 1000;
/// The target page size (x86), as the stream records it.
const TARGET_PAGE_SIZE: u64 = cpr_savevm::consts::TARGET_PAGE_SIZE as u64;

/// A refused parameter, worded as QEMU words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// Out of its type's range (`Parameter 'cpu-throttle-initial' expects uint8`, QMP
    /// name) or of QEMU's check (`Parameter 'downtime_limit' expects ...`, C name).
    #[error("Parameter '{name}' expects {what}")]
    Expects {
        /// The parameter, as the message names it.
        name: &'static str,
        /// What it expects.
        what: &'static str,
    },
    /// A value the parameter's enum does not have.
    #[error("Parameter '{name}' does not accept value '{value}'")]
    BadValue {
        /// The parameter.
        name: &'static str,
        /// The value given.
        value: String,
    },
    /// Not a parameter (the QMP schema refuses it first).
    #[error("Parameter '{0}' is unexpected")]
    Unexpected(String),
}

fn expects(name: &'static str, what: &'static str) -> ParamError {
    ParamError::Expects { name, what }
}

/// The migration parameters, with QEMU's defaults (`query-migrate-parameters`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // QEMU's `MigrationParameters` members, named as in QAPI.
pub struct MigrationParameters {
    pub announce_initial: u64,
    pub announce_max: u64,
    pub announce_rounds: u64,
    pub announce_step: u64,
    pub throttle_trigger_threshold: u8,
    pub cpu_throttle_initial: u8,
    pub cpu_throttle_increment: u8,
    pub cpu_throttle_tailslow: bool,
    pub max_bandwidth: u64,
    pub avail_switchover_bandwidth: u64,
    pub downtime_limit: u64,
    pub x_checkpoint_delay: u32,
    pub multifd_channels: u8,
    pub xbzrle_cache_size: u64,
    pub max_postcopy_bandwidth: u64,
    pub max_cpu_throttle: u8,
    /// The migration mode.
    pub mode: MigMode,
    pub direct_io: bool,
    pub x_vcpu_dirty_limit_period: u64,
    /// `cpr-exec-command` (10.2): the command `cpr-exec` runs in place of this process.
    pub cpr_exec_command: Vec<String>,
}

impl Default for MigrationParameters {
    fn default() -> Self {
        MigrationParameters {
            announce_initial: 50,
            announce_max: 550,
            announce_rounds: 5,
            announce_step: 100,
            throttle_trigger_threshold: 50,
            cpu_throttle_initial: 20,
            cpu_throttle_increment: 10,
            cpu_throttle_tailslow: false,
            max_bandwidth: 128 << 20,
            avail_switchover_bandwidth: 0,
            downtime_limit: 300,
            x_checkpoint_delay: 200 * 100,
            multifd_channels: 2,
            xbzrle_cache_size: 64 << 20,
            max_postcopy_bandwidth: 0,
            max_cpu_throttle: 99,
            mode: MigMode::Normal,
            direct_io: false,
            x_vcpu_dirty_limit_period: 1000,
            cpr_exec_command: Vec::new(),
        }
    }
}

/// `migrate-set-parameters`' arguments (`MigrateSetParameters`, the subset we know): the
/// parameters to change, each already read with its QAPI type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)] // As in `MigrationParameters`.
pub struct SetParameters {
    pub announce_initial: Option<u64>,
    pub announce_max: Option<u64>,
    pub announce_rounds: Option<u64>,
    pub announce_step: Option<u64>,
    pub throttle_trigger_threshold: Option<u8>,
    pub cpu_throttle_initial: Option<u8>,
    pub cpu_throttle_increment: Option<u8>,
    pub cpu_throttle_tailslow: Option<bool>,
    pub max_bandwidth: Option<u64>,
    pub avail_switchover_bandwidth: Option<u64>,
    pub downtime_limit: Option<u64>,
    pub x_checkpoint_delay: Option<u32>,
    pub multifd_channels: Option<u8>,
    pub xbzrle_cache_size: Option<u64>,
    pub max_postcopy_bandwidth: Option<u64>,
    pub max_cpu_throttle: Option<u8>,
    pub mode: Option<MigMode>,
    pub direct_io: Option<bool>,
    pub x_vcpu_dirty_limit_period: Option<u64>,
    pub cpr_exec_command: Option<Vec<String>>,
}

/// `n` as a narrower QAPI integer type, or QEMU's visitor error.
fn narrow<T: TryFrom<u64>>(name: &'static str, n: u64, ty: &'static str) -> Result<T, ParamError> {
    T::try_from(n).map_err(|_| expects(name, ty))
}

impl SetParameters {
    /// Sets the integer parameter `name` (its QMP name) as QEMU's input visitor reads it:
    /// a `uint8`/`uint32` out of range is `Parameter '<name>' expects uint8` (`uint32`).
    /// (A negative `uint64`/`size` is the caller's to take modulo 2^64, as QEMU does.)
    pub fn set_uint(&mut self, name: &str, n: u64) -> Result<(), ParamError> {
        match name {
            "announce-initial" => self.announce_initial = Some(n),
            "announce-max" => self.announce_max = Some(n),
            "announce-rounds" => self.announce_rounds = Some(n),
            "announce-step" => self.announce_step = Some(n),
            "throttle-trigger-threshold" => {
                self.throttle_trigger_threshold =
                    Some(narrow("throttle-trigger-threshold", n, "uint8")?);
            }
            "cpu-throttle-initial" => {
                self.cpu_throttle_initial = Some(narrow("cpu-throttle-initial", n, "uint8")?);
            }
            "cpu-throttle-increment" => {
                self.cpu_throttle_increment = Some(narrow("cpu-throttle-increment", n, "uint8")?);
            }
            "max-bandwidth" => self.max_bandwidth = Some(n),
            "avail-switchover-bandwidth" => self.avail_switchover_bandwidth = Some(n),
            "downtime-limit" => self.downtime_limit = Some(n),
            "x-checkpoint-delay" => {
                self.x_checkpoint_delay = Some(narrow("x-checkpoint-delay", n, "uint32")?);
            }
            "multifd-channels" => {
                self.multifd_channels = Some(narrow("multifd-channels", n, "uint8")?);
            }
            "xbzrle-cache-size" => self.xbzrle_cache_size = Some(n),
            "max-postcopy-bandwidth" => self.max_postcopy_bandwidth = Some(n),
            "max-cpu-throttle" => {
                self.max_cpu_throttle = Some(narrow("max-cpu-throttle", n, "uint8")?);
            }
            "x-vcpu-dirty-limit-period" => self.x_vcpu_dirty_limit_period = Some(n),
            other => return Err(ParamError::Unexpected(other.to_string())),
        }
        Ok(())
    }

    /// Sets the boolean parameter `name` (its QMP name).
    pub fn set_bool(&mut self, name: &str, on: bool) -> Result<(), ParamError> {
        match name {
            "cpu-throttle-tailslow" => self.cpu_throttle_tailslow = Some(on),
            "direct-io" => self.direct_io = Some(on),
            other => return Err(ParamError::Unexpected(other.to_string())),
        }
        Ok(())
    }

    /// Sets `mode` from its wire name.
    pub fn set_mode(&mut self, value: &str) -> Result<(), ParamError> {
        self.mode = Some(
            MigMode::from_wire(value).ok_or_else(|| ParamError::BadValue {
                name: "mode",
                value: value.to_string(),
            })?,
        );
        Ok(())
    }

    /// Sets the parameter `name` from a `-global` value: `ty` says how the text is read.
    pub fn set_text(
        &mut self,
        name: &str,
        ty: PropertyType,
        text: &str,
    ) -> Result<(), GlobalError> {
        match ty {
            PropertyType::Bool => self.set_bool(name, parse_bool(text)?)?,
            PropertyType::Str => self.set_mode(text)?,
            PropertyType::Uint => {
                let n = match text.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => text.parse(),
                };
                let n = n.map_err(|_| GlobalError::NotUnsigned(text.to_string()))?;
                self.set_uint(name, n)?;
            }
        }
        Ok(())
    }
}

impl MigrationParameters {
    /// `migrate-set-parameters`: applies `set` to a copy, checks the result as QEMU does,
    /// and only then keeps it.
    pub fn apply(&mut self, set: &SetParameters) -> Result<(), ParamError> {
        let mut next = self.clone();
        macro_rules! merge {
            ($($field:ident),*) => {
                $(if let Some(v) = set.$field {
                    next.$field = v;
                })*
            };
        }
        merge!(
            announce_initial,
            announce_max,
            announce_rounds,
            announce_step,
            throttle_trigger_threshold,
            cpu_throttle_initial,
            cpu_throttle_increment,
            cpu_throttle_tailslow,
            max_bandwidth,
            avail_switchover_bandwidth,
            downtime_limit,
            x_checkpoint_delay,
            multifd_channels,
            xbzrle_cache_size,
            max_postcopy_bandwidth,
            max_cpu_throttle,
            mode,
            direct_io,
            x_vcpu_dirty_limit_period
        );
        if let Some(cmd) = &set.cpr_exec_command {
            next.cpr_exec_command.clone_from(cmd);
        }
        next.check()?;
        *self = next;
        Ok(())
    }

    /// QEMU's `migrate_params_check`, in its order and with its words.
    fn check(&self) -> Result<(), ParamError> {
        if !(1..=100).contains(&self.throttle_trigger_threshold) {
            return Err(expects(
                "throttle_trigger_threshold",
                "an integer in the range of 1 to 100",
            ));
        }
        if !(1..=99).contains(&self.cpu_throttle_initial) {
            return Err(expects(
                "cpu_throttle_initial",
                "an integer in the range of 1 to 99",
            ));
        }
        if !(1..=99).contains(&self.cpu_throttle_increment) {
            return Err(expects(
                "cpu_throttle_increment",
                "an integer in the range of 1 to 99",
            ));
        }
        // max_bandwidth and avail_switchover_bandwidth: at most SIZE_MAX, always true here.
        if self.downtime_limit > MAX_DOWNTIME_MS {
            return Err(expects(
                "downtime_limit",
                "an integer in the range of 0 to (2000 * 1000) ms",
            ));
        }
        if self.multifd_channels < 1 {
            return Err(expects("multifd_channels", "a value between 1 and 255"));
        }
        if self.xbzrle_cache_size < TARGET_PAGE_SIZE || !self.xbzrle_cache_size.is_power_of_two() {
            return Err(expects(
                "xbzrle_cache_size",
                "a power of two no less than the target page size",
            ));
        }
        if self.max_cpu_throttle < self.cpu_throttle_initial || self.max_cpu_throttle > 99 {
            return Err(expects(
                "max_cpu_throttle",
                "an integer in the range of cpu_throttle_initial to 99",
            ));
        }
        if self.announce_initial > 100_000 {
            return Err(expects("announce_initial", "a value between 0 and 100000"));
        }
        if self.announce_max > 100_000 {
            return Err(expects("announce_max", "a value between 0 and 100000"));
        }
        if self.announce_rounds > 1000 {
            return Err(expects("announce_rounds", "a value between 0 and 1000"));
        }
        if !(1..=10_000).contains(&self.announce_step) {
            return Err(expects("announce_step", "a value between 0 and 10000"));
        }
        if !(1..=1000).contains(&self.x_vcpu_dirty_limit_period) {
            return Err(expects(
                "x-vcpu-dirty-limit-period",
                "a value between 1 and 1000",
            ));
        }
        Ok(())
    }
}

/// What a `-global migration.<property>` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum GlobalProperty {
    /// A parameter, by its `migrate-set-parameters` name, and the JSON type it takes.
    Parameter(&'static str, PropertyType),
    /// A capability, by its `migrate-set-capabilities` name.
    Capability(MigrationCapability),
}

/// How a `-global` value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyType {
    /// An unsigned integer (decimal, or `0x` hexadecimal).
    Uint,
    /// `on`/`off` (also `true`/`false`, `yes`/`no`).
    Bool,
    /// A string (an enum value).
    Str,
}

/// QEMU's `migration` object properties for the parameters (`migration_properties[]`).
const PARAMETER_PROPERTIES: &[(&str, &str, PropertyType)] = &[
    (
        "x-throttle-trigger-threshold",
        "throttle-trigger-threshold",
        PropertyType::Uint,
    ),
    (
        "x-cpu-throttle-initial",
        "cpu-throttle-initial",
        PropertyType::Uint,
    ),
    (
        "x-cpu-throttle-increment",
        "cpu-throttle-increment",
        PropertyType::Uint,
    ),
    (
        "x-cpu-throttle-tailslow",
        "cpu-throttle-tailslow",
        PropertyType::Bool,
    ),
    ("x-max-bandwidth", "max-bandwidth", PropertyType::Uint),
    (
        "avail-switchover-bandwidth",
        "avail-switchover-bandwidth",
        PropertyType::Uint,
    ),
    ("x-downtime-limit", "downtime-limit", PropertyType::Uint),
    (
        "x-checkpoint-delay",
        "x-checkpoint-delay",
        PropertyType::Uint,
    ),
    ("multifd-channels", "multifd-channels", PropertyType::Uint),
    ("xbzrle-cache-size", "xbzrle-cache-size", PropertyType::Uint),
    (
        "max-postcopy-bandwidth",
        "max-postcopy-bandwidth",
        PropertyType::Uint,
    ),
    ("max-cpu-throttle", "max-cpu-throttle", PropertyType::Uint),
    ("announce-initial", "announce-initial", PropertyType::Uint),
    ("announce-max", "announce-max", PropertyType::Uint),
    ("announce-rounds", "announce-rounds", PropertyType::Uint),
    ("announce-step", "announce-step", PropertyType::Uint),
    (
        "x-vcpu-dirty-limit-period",
        "x-vcpu-dirty-limit-period",
        PropertyType::Uint,
    ),
    ("mode", "mode", PropertyType::Str),
];

/// The `migration` property `name` names, if any. Capabilities are QEMU's
/// `DEFINE_PROP_MIG_CAP` names: `x-<capability>` (`x-events`, `x-postcopy-ram`), or the
/// capability's own name where it has an `x-` already (`x-ignore-shared`, `x-colo`) or is
/// `mapped-ram`.
pub(super) fn global_property(name: &str) -> Option<GlobalProperty> {
    if let Some((_, param, ty)) = PARAMETER_PROPERTIES.iter().find(|(p, _, _)| *p == name) {
        return Some(GlobalProperty::Parameter(param, *ty));
    }
    MigrationCapability::ALL
        .iter()
        .copied()
        .find(|cap| {
            let cap_name = cap.as_str();
            if cap_name.starts_with("x-") || *cap == MigrationCapability::MappedRam {
                cap_name == name
            } else {
                name.strip_prefix("x-") == Some(cap_name)
            }
        })
        .map(GlobalProperty::Capability)
}

/// Why a `-global migration.<property>=<value>` cannot be applied (after QEMU's `can't
/// apply global %s: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobalError {
    /// No such property.
    #[error("Property '{driver}.{property}' not found")]
    NotFound {
        /// The object (`migration`).
        driver: String,
        /// The property.
        property: String,
    },
    /// A boolean property with another value.
    #[error("'{0}' is not a boolean (use 'on' or 'off', 'yes' or 'no', 'true' or 'false')")]
    NotBoolean(String),
    /// An integer property with another value.
    #[error("'{0}' is not an unsigned integer")]
    NotUnsigned(String),
    /// The value is refused as `migrate-set-parameters` refuses it.
    #[error(transparent)]
    Parameter(#[from] ParamError),
}

/// QEMU's `qapi_bool_parse`.
pub(super) fn parse_bool(text: &str) -> Result<bool, GlobalError> {
    match text {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(GlobalError::NotBoolean(text.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Case<'a> = (&'a [(&'a str, u64)], Option<&'a str>, &'a str);

    /// `migrate-set-parameters` as the QMP layer feeds it: uints first, then the rest.
    fn set(
        p: &mut MigrationParameters,
        uints: &[(&str, u64)],
        mode: Option<&str>,
    ) -> Result<(), String> {
        let mut s = SetParameters::default();
        for (name, n) in uints {
            s.set_uint(name, *n).map_err(|e| e.to_string())?;
        }
        if let Some(m) = mode {
            s.set_mode(m).map_err(|e| e.to_string())?;
        }
        p.apply(&s).map_err(|e| e.to_string())
    }

    #[test]
    fn out_of_range_values_are_refused_with_qemu_words_and_change_nothing() {
        let mut p = MigrationParameters::default();
        let cases: [Case; 11] = [
            (
                &[("downtime-limit", u64::MAX)],
                None,
                "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms",
            ),
            (
                &[("announce-max", u64::MAX)],
                None,
                "Parameter 'announce_max' expects a value between 0 and 100000",
            ),
            (
                &[("announce-step", 0)],
                None,
                "Parameter 'announce_step' expects a value between 0 and 10000",
            ),
            (
                &[("cpu-throttle-initial", 300)],
                None,
                "Parameter 'cpu-throttle-initial' expects uint8",
            ),
            (
                &[("cpu-throttle-initial", 0)],
                None,
                "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99",
            ),
            (
                &[("multifd-channels", 0)],
                None,
                "Parameter 'multifd_channels' expects a value between 1 and 255",
            ),
            (
                &[("xbzrle-cache-size", 5000)],
                None,
                "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size",
            ),
            (
                &[("max-cpu-throttle", 10)],
                None,
                "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99",
            ),
            (
                &[("x-checkpoint-delay", u64::MAX)],
                None,
                "Parameter 'x-checkpoint-delay' expects uint32",
            ),
            (
                &[("x-vcpu-dirty-limit-period", 0)],
                None,
                "Parameter 'x-vcpu-dirty-limit-period' expects a value between 1 and 1000",
            ),
            // One bad value refuses the whole call: the good one is not kept either.
            (
                &[("downtime-limit", 2_000_001)],
                Some("cpr-reboot"),
                "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms",
            ),
        ];
        for (uints, mode, want) in cases {
            assert_eq!(set(&mut p, uints, mode), Err(want.to_string()), "{uints:?}");
            assert_eq!(
                p,
                MigrationParameters::default(),
                "{uints:?} changed something"
            );
        }
        assert_eq!(p.downtime_limit, 300);
        assert_eq!(p.announce_max, 550);
    }

    #[test]
    fn in_range_values_are_kept() {
        let mut p = MigrationParameters::default();
        set(
            &mut p,
            &[
                ("downtime-limit", 2_000_000),
                ("announce-max", 100_000),
                ("max-bandwidth", u64::MAX),
            ],
            Some("cpr-reboot"),
        )
        .expect("in range");
        assert_eq!(p.downtime_limit, 2_000_000);
        assert_eq!(p.announce_max, 100_000);
        assert_eq!(p.mode, MigMode::CprReboot);
        assert_eq!(p.max_bandwidth, u64::MAX);
    }

    #[test]
    fn global_properties_use_qemus_names() {
        assert_eq!(
            global_property("x-ignore-shared"),
            Some(GlobalProperty::Capability(
                MigrationCapability::XIgnoreShared
            ))
        );
        assert_eq!(
            global_property("x-events"),
            Some(GlobalProperty::Capability(MigrationCapability::Events))
        );
        assert_eq!(
            global_property("mapped-ram"),
            Some(GlobalProperty::Capability(MigrationCapability::MappedRam))
        );
        assert_eq!(global_property("events"), None);
        assert_eq!(
            global_property("mode"),
            Some(GlobalProperty::Parameter("mode", PropertyType::Str))
        );
        assert_eq!(
            global_property("x-downtime-limit"),
            Some(GlobalProperty::Parameter(
                "downtime-limit",
                PropertyType::Uint
            ))
        );
        assert_eq!(global_property("frobnicate"), None);
        assert_eq!(parse_bool("on"), Ok(true));
        assert_eq!(parse_bool("false"), Ok(false));
        parse_bool("maybe").expect_err("not a boolean");
        let mut s = SetParameters::default();
        s.set_text("downtime-limit", PropertyType::Uint, "0x10")
            .expect("hex");
        assert_eq!(s.downtime_limit, Some(16));
        s.set_text("downtime-limit", PropertyType::Uint, "-1")
            .expect_err("not unsigned");
    }
}
