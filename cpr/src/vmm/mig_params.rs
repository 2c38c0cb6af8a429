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

use serde_json::{Map, Value, json};

use super::migration::MigMode;

/// QEMU's `MAX_MIGRATE_DOWNTIME` as its message prints it (`stringify` of the macro).
const MAX_DOWNTIME_MS: u64 = 2000 * 1000;
/// The target page size (x86), as the stream records it.
const TARGET_PAGE_SIZE: u64 = cpr_savevm::consts::TARGET_PAGE_SIZE as u64;

/// A refused parameter, worded as QEMU words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

fn expects(name: &str, what: &str) -> ParamError {
    ParamError(format!("Parameter '{name}' expects {what}"))
}

/// The migration parameters, with QEMU's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationParameters {
    announce_initial: u64,
    announce_max: u64,
    announce_rounds: u64,
    announce_step: u64,
    throttle_trigger_threshold: u8,
    cpu_throttle_initial: u8,
    cpu_throttle_increment: u8,
    cpu_throttle_tailslow: bool,
    max_bandwidth: u64,
    avail_switchover_bandwidth: u64,
    downtime_limit: u64,
    x_checkpoint_delay: u32,
    multifd_channels: u8,
    xbzrle_cache_size: u64,
    max_postcopy_bandwidth: u64,
    max_cpu_throttle: u8,
    /// The migration mode.
    pub mode: MigMode,
    direct_io: bool,
    x_vcpu_dirty_limit_period: u64,
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
        }
    }
}

/// A JSON number as QEMU's input visitor reads a `uint64`/`size`: negative values are
/// taken modulo 2^64.
fn uint64(name: &str, v: &Value, ty: &str) -> Result<u64, ParamError> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    if let Some(n) = v.as_i64() {
        return Ok(n.cast_unsigned());
    }
    Err(ParamError(format!(
        "Invalid parameter type for '{name}', expected: {ty}"
    )))
}

fn uint_n<T: TryFrom<u64>>(name: &str, v: &Value, ty: &str) -> Result<T, ParamError> {
    let n = uint64(name, v, ty)?;
    T::try_from(n).map_err(|_| expects(name, ty))
}

fn boolean(name: &str, v: &Value) -> Result<bool, ParamError> {
    v.as_bool().ok_or_else(|| {
        ParamError(format!(
            "Invalid parameter type for '{name}', expected: boolean"
        ))
    })
}

impl MigrationParameters {
    /// `migrate-set-parameters`: applies `args` to a copy, checks the result as QEMU does,
    /// and only then keeps it. Unknown names are refused (the QMP schema refuses them
    /// first).
    pub fn apply(&mut self, args: &Map<String, Value>) -> Result<(), ParamError> {
        let mut next = self.clone();
        for (name, v) in args {
            next.set(name, v)?;
        }
        next.check()?;
        *self = next;
        Ok(())
    }

    fn set(&mut self, name: &str, v: &Value) -> Result<(), ParamError> {
        match name {
            "announce-initial" => self.announce_initial = uint64(name, v, "size")?,
            "announce-max" => self.announce_max = uint64(name, v, "size")?,
            "announce-rounds" => self.announce_rounds = uint64(name, v, "size")?,
            "announce-step" => self.announce_step = uint64(name, v, "size")?,
            "throttle-trigger-threshold" => {
                self.throttle_trigger_threshold = uint_n(name, v, "uint8")?;
            }
            "cpu-throttle-initial" => self.cpu_throttle_initial = uint_n(name, v, "uint8")?,
            "cpu-throttle-increment" => self.cpu_throttle_increment = uint_n(name, v, "uint8")?,
            "cpu-throttle-tailslow" => self.cpu_throttle_tailslow = boolean(name, v)?,
            "max-bandwidth" => self.max_bandwidth = uint64(name, v, "size")?,
            "avail-switchover-bandwidth" => {
                self.avail_switchover_bandwidth = uint64(name, v, "size")?;
            }
            "downtime-limit" => self.downtime_limit = uint64(name, v, "uint64")?,
            "x-checkpoint-delay" => self.x_checkpoint_delay = uint_n(name, v, "uint32")?,
            "multifd-channels" => self.multifd_channels = uint_n(name, v, "uint8")?,
            "xbzrle-cache-size" => self.xbzrle_cache_size = uint64(name, v, "size")?,
            "max-postcopy-bandwidth" => self.max_postcopy_bandwidth = uint64(name, v, "size")?,
            "max-cpu-throttle" => self.max_cpu_throttle = uint_n(name, v, "uint8")?,
            "x-vcpu-dirty-limit-period" => {
                self.x_vcpu_dirty_limit_period = uint64(name, v, "uint64")?;
            }
            "direct-io" => self.direct_io = boolean(name, v)?,
            "mode" => {
                self.mode = match v.as_str() {
                    Some("normal") => MigMode::Normal,
                    Some("cpr-reboot") => MigMode::CprReboot,
                    Some(other) => {
                        return Err(ParamError(format!(
                            "Parameter 'mode' does not accept value '{other}'"
                        )));
                    }
                    None => {
                        return Err(ParamError(
                            "Invalid parameter type for 'mode', expected: string".into(),
                        ));
                    }
                };
            }
            other => return Err(ParamError(format!("Parameter '{other}' is unexpected"))),
        }
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

    /// `query-migrate-parameters`.
    pub fn to_json(&self) -> Value {
        json!({
            "announce-initial": self.announce_initial,
            "announce-max": self.announce_max,
            "announce-rounds": self.announce_rounds,
            "announce-step": self.announce_step,
            "throttle-trigger-threshold": self.throttle_trigger_threshold,
            "cpu-throttle-initial": self.cpu_throttle_initial,
            "cpu-throttle-increment": self.cpu_throttle_increment,
            "cpu-throttle-tailslow": self.cpu_throttle_tailslow,
            "max-bandwidth": self.max_bandwidth,
            "avail-switchover-bandwidth": self.avail_switchover_bandwidth,
            "downtime-limit": self.downtime_limit,
            "x-checkpoint-delay": self.x_checkpoint_delay,
            "multifd-channels": self.multifd_channels,
            "xbzrle-cache-size": self.xbzrle_cache_size,
            "max-postcopy-bandwidth": self.max_postcopy_bandwidth,
            "max-cpu-throttle": self.max_cpu_throttle,
            "mode": self.mode.as_str(),
            "direct-io": self.direct_io,
            "x-vcpu-dirty-limit-period": self.x_vcpu_dirty_limit_period,
        })
    }
}

/// What a `-global migration.<property>` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalProperty {
    /// A parameter, by its `migrate-set-parameters` name, and the JSON type it takes.
    Parameter(&'static str, PropertyType),
    /// A capability, by its `migrate-set-capabilities` name.
    Capability(&'static str),
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
pub fn global_property(name: &str) -> Option<GlobalProperty> {
    if let Some((_, param, ty)) = PARAMETER_PROPERTIES.iter().find(|(p, _, _)| *p == name) {
        return Some(GlobalProperty::Parameter(param, *ty));
    }
    crate::qmp::schema::MIGRATION_CAPABILITY
        .values
        .iter()
        .find(|cap| {
            if cap.starts_with("x-") || **cap == "mapped-ram" {
                **cap == name
            } else {
                name.strip_prefix("x-") == Some(**cap)
            }
        })
        .map(|cap| GlobalProperty::Capability(cap))
}

/// A `-global` value as JSON for `ty`, or why not.
pub fn property_value(ty: PropertyType, text: &str) -> Result<Value, String> {
    match ty {
        PropertyType::Bool => parse_bool(text).map(Value::Bool),
        PropertyType::Str => Ok(Value::String(text.to_string())),
        PropertyType::Uint => {
            let n = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            n.map(Value::from)
                .map_err(|_| format!("'{text}' is not an unsigned integer"))
        }
    }
}

/// QEMU's `qapi_bool_parse`.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(format!(
            "'{text}' is not a boolean (use 'on' or 'off', 'yes' or 'no', 'true' or 'false')"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(p: &mut MigrationParameters, v: Value) -> Result<(), String> {
        p.apply(v.as_object().expect("object")).map_err(|e| e.0)
    }

    #[test]
    fn out_of_range_values_are_refused_with_qemu_words_and_change_nothing() {
        let mut p = MigrationParameters::default();
        let cases = [
            (
                json!({"downtime-limit": -1}),
                "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms",
            ),
            (
                json!({"announce-max": -1}),
                "Parameter 'announce_max' expects a value between 0 and 100000",
            ),
            (
                json!({"announce-step": 0}),
                "Parameter 'announce_step' expects a value between 0 and 10000",
            ),
            (
                json!({"cpu-throttle-initial": 300}),
                "Parameter 'cpu-throttle-initial' expects uint8",
            ),
            (
                json!({"cpu-throttle-initial": 0}),
                "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99",
            ),
            (
                json!({"multifd-channels": 0}),
                "Parameter 'multifd_channels' expects a value between 1 and 255",
            ),
            (
                json!({"xbzrle-cache-size": 5000}),
                "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size",
            ),
            (
                json!({"max-cpu-throttle": 10}),
                "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99",
            ),
            (
                json!({"x-checkpoint-delay": -1}),
                "Parameter 'x-checkpoint-delay' expects uint32",
            ),
            (
                json!({"x-vcpu-dirty-limit-period": 0}),
                "Parameter 'x-vcpu-dirty-limit-period' expects a value between 1 and 1000",
            ),
            // One bad value refuses the whole call: the good one is not kept either.
            (
                json!({"mode": "cpr-reboot", "downtime-limit": 2_000_001}),
                "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(set(&mut p, args.clone()), Err(want.to_string()), "{args}");
            assert_eq!(
                p,
                MigrationParameters::default(),
                "{args} changed something"
            );
        }
        let q = p.to_json();
        assert_eq!(q["downtime-limit"], 300);
        assert_eq!(q["announce-max"], 550);
    }

    #[test]
    fn in_range_values_are_kept_and_reported() {
        let mut p = MigrationParameters::default();
        set(
            &mut p,
            json!({"downtime-limit": 2_000_000, "announce-max": 100_000, "mode": "cpr-reboot",
                   "max-bandwidth": -1}),
        )
        .expect("in range");
        let q = p.to_json();
        assert_eq!(q["downtime-limit"], 2_000_000);
        assert_eq!(q["announce-max"], 100_000);
        assert_eq!(q["mode"], "cpr-reboot");
        // QEMU takes a negative size modulo 2^64, and SIZE_MAX allows it.
        assert_eq!(q["max-bandwidth"], u64::MAX);
    }

    #[test]
    fn global_properties_use_qemus_names() {
        assert_eq!(
            global_property("x-ignore-shared"),
            Some(GlobalProperty::Capability("x-ignore-shared"))
        );
        assert_eq!(
            global_property("x-events"),
            Some(GlobalProperty::Capability("events"))
        );
        assert_eq!(
            global_property("mapped-ram"),
            Some(GlobalProperty::Capability("mapped-ram"))
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
        assert_eq!(
            property_value(PropertyType::Uint, "0x10"),
            Ok(Value::from(16u64))
        );
        property_value(PropertyType::Uint, "-1").expect_err("not unsigned");
    }
}
