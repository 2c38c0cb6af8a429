//! Scenario tests for [`VmRunState`] against a recording mock machine.

use super::*;
use crate::table::TRANSITIONS;
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    PauseVcpus,
    ResumeVcpus,
    EnableTicks,
    DisableTicks,
    Wakeup(WakeupReason),
}

#[derive(Debug, thiserror::Error)]
#[error("mock failure")]
struct MockError;

/// Records every call and tracks what a real VMM would have: whether guest
/// time runs and whether vCPU threads run. Starts like a fresh VMM: both off.
#[derive(Debug, Default)]
struct Mock {
    calls: Vec<Call>,
    ticks_enabled: bool,
    vcpus_running: bool,
    fail: Option<ControlOp>,
}

impl Mock {
    fn step(&mut self, op: ControlOp, call: Call) -> Result<(), MockError> {
        if self.fail == Some(op) {
            return Err(MockError);
        }
        self.calls.push(call);
        Ok(())
    }
}

impl VmControl for Mock {
    type Error = MockError;

    fn pause_vcpus(&mut self) -> Result<(), MockError> {
        self.step(ControlOp::PauseVcpus, Call::PauseVcpus)?;
        self.vcpus_running = false;
        Ok(())
    }
    fn resume_vcpus(&mut self) -> Result<(), MockError> {
        self.step(ControlOp::ResumeVcpus, Call::ResumeVcpus)?;
        self.vcpus_running = true;
        Ok(())
    }
    fn enable_ticks(&mut self) -> Result<(), MockError> {
        self.step(ControlOp::EnableTicks, Call::EnableTicks)?;
        self.ticks_enabled = true;
        Ok(())
    }
    fn disable_ticks(&mut self) -> Result<(), MockError> {
        self.step(ControlOp::DisableTicks, Call::DisableTicks)?;
        self.ticks_enabled = false;
        Ok(())
    }
    fn wakeup(&mut self, reason: WakeupReason) -> Result<(), MockError> {
        self.step(ControlOp::Wakeup, Call::Wakeup(reason))
    }
}

fn events(vm: &mut VmRunState<Mock>) -> Vec<Event> {
    vm.drain_events().map(|e| e.event).collect()
}

/// A VM forced into `state`, with a machine matching it and no history.
fn vm_in(state: RunState) -> VmRunState<Mock> {
    let mut vm = VmRunState::new(Mock::default());
    vm.state = state;
    vm.machine.ticks_enabled = state.is_live();
    vm.machine.vcpus_running = state.is_running();
    vm
}

/// cpr-load (V7 step 6, `docs/V7-CHECKLIST.md`) of a guest saved `suspended` into a fresh `-S`
/// VMM: `runstate_set(suspended)` and, with the patch, arm start-on-wakeup.
fn cpr_load_suspended(arm_start_on_wakeup: bool) -> VmRunState<Mock> {
    let mut vm = VmRunState::new(Mock::default());
    assert_eq!(vm.state(), RunState::Prelaunch);
    vm.runstate_set(RunState::Suspended).unwrap();
    if arm_start_on_wakeup {
        vm.start_on_wakeup_request();
    }
    vm.register_wakeup_support();
    vm
}

#[test]
fn patch5_wakeup_after_cpr_load_emits_resume_then_wakeup() {
    let mut vm = cpr_load_suspended(true);
    vm.wakeup_request(WakeupReason::Other).unwrap();
    // RESUME comes from inside the request, before the main loop runs.
    assert_eq!(events(&mut vm), [Event::Resume]);
    assert!(vm.process_wakeup().unwrap());
    assert_eq!(events(&mut vm), [Event::Wakeup]);

    assert!(!vm.start_on_wakeup_requested());
    assert_eq!(vm.wakeup_pending(), WakeupReason::None);
    assert_eq!(
        vm.query_status(),
        StatusInfo {
            running: true,
            status: RunState::Running
        }
    );
    assert!(vm.machine().ticks_enabled);
    assert!(vm.machine().vcpus_running);
    assert_eq!(
        vm.machine().calls,
        [
            Call::EnableTicks,
            Call::ResumeVcpus,
            Call::PauseVcpus,
            Call::Wakeup(WakeupReason::Other),
            Call::ResumeVcpus,
        ]
    );
}

#[test]
fn patch5_event_sequence_via_system_wakeup_and_main_loop() {
    let mut vm = cpr_load_suspended(true);
    vm.system_wakeup().unwrap();
    vm.process_requests().unwrap();
    assert_eq!(events(&mut vm), [Event::Resume, Event::Wakeup]);
    assert!(vm.machine().ticks_enabled);
}

#[test]
fn without_patch5_wakeup_claims_running_but_ticks_stay_off() {
    // The pre-patch behaviour: same load, flag not armed.
    let mut vm = cpr_load_suspended(false);
    vm.wakeup_request(WakeupReason::Other).unwrap();
    vm.process_wakeup().unwrap();
    // No RESUME, guest time never started, yet query-status says running.
    assert_eq!(events(&mut vm), [Event::Wakeup]);
    assert!(!vm.machine().ticks_enabled);
    assert!(!vm.machine().calls.contains(&Call::EnableTicks));
    assert!(vm.query_status().running);
}

#[test]
fn same_process_suspend_and_wakeup_needs_no_flag() {
    let mut vm = VmRunState::new(Mock::default());
    vm.vm_start().unwrap();
    vm.suspend_request();
    vm.process_requests().unwrap();
    assert_eq!(vm.state(), RunState::Suspended);
    assert!(!vm.machine().vcpus_running);
    assert!(vm.machine().ticks_enabled, "suspend leaves ticks on");
    vm.suspend_request(); // already suspended: ignored
    assert!(!vm.suspend_requested());

    vm.wakeup_request(WakeupReason::Rtc).unwrap();
    vm.process_requests().unwrap();
    assert_eq!(
        events(&mut vm),
        [Event::Resume, Event::Suspend, Event::Wakeup]
    );
    assert!(vm.machine().ticks_enabled && vm.machine().vcpus_running);
    assert_eq!(
        vm.machine().calls.last(),
        Some(&Call::ResumeVcpus),
        "main loop resumed the vcpus"
    );
}

#[test]
fn vm_stop_from_running_pauses_and_emits_stop() {
    let mut vm = vm_in(RunState::Running);
    vm.vm_stop(RunState::SaveVm).unwrap();
    assert_eq!(vm.state(), RunState::SaveVm);
    assert_eq!(events(&mut vm), [Event::Stop]);
    assert_eq!(vm.machine().calls, [Call::DisableTicks, Call::PauseVcpus]);
    assert!(!vm.machine().ticks_enabled && !vm.machine().vcpus_running);
}

#[test]
fn vm_stop_when_not_running_does_nothing() {
    for from in RunState::ALL.into_iter().filter(|s| !s.is_running()) {
        for to in RunState::ALL {
            let mut vm = vm_in(from);
            vm.vm_stop(to).unwrap();
            assert_eq!(vm.state(), from, "vm_stop({to}) from {from}");
            assert!(events(&mut vm).is_empty());
            assert!(vm.machine().calls.is_empty());
        }
    }
}

#[test]
fn vm_stop_to_running_or_unlisted_state_is_rejected() {
    for to in [
        RunState::Running,
        RunState::Prelaunch,
        RunState::Postmigrate,
    ] {
        let mut vm = vm_in(RunState::Running);
        match vm.vm_stop(to) {
            Err(Error::InvalidTransition { from, to: t }) => {
                assert_eq!((from, t), (RunState::Running, to));
            }
            other => panic!("vm_stop({to}): {other:?}"),
        }
        assert_eq!(vm.state(), RunState::Running);
        assert!(vm.machine().calls.is_empty());
    }
}

#[test]
fn vm_start_when_running_only_flushes_a_pending_stop() {
    let mut vm = vm_in(RunState::Running);
    vm.vm_start().unwrap();
    assert!(events(&mut vm).is_empty());
    vm.vmstop_request(RunState::IoError);
    vm.vm_start().unwrap();
    assert_eq!(events(&mut vm), [Event::Stop, Event::Resume]);
    assert!(vm.machine().calls.is_empty());
    // The request was consumed: the main loop will not stop the VM.
    vm.process_requests().unwrap();
    assert_eq!(vm.state(), RunState::Running);
}

#[test]
fn vmstop_request_is_processed_by_the_main_loop() {
    let mut vm = vm_in(RunState::Running);
    vm.vmstop_request(RunState::Paused);
    vm.process_requests().unwrap();
    assert_eq!(vm.state(), RunState::Paused);
    assert_eq!(events(&mut vm), [Event::Stop]);
}

#[test]
fn vm_start_from_a_state_without_an_edge_is_an_error() {
    for from in [
        RunState::Shutdown,
        RunState::InternalError,
        RunState::Inmigrate,
    ] {
        let mut vm = vm_in(from);
        let listed = TRANSITIONS.contains(&(from, RunState::Running));
        let r = vm.vm_start();
        assert_eq!(r.is_ok(), listed, "{from}");
        if !listed {
            assert!(vm.machine().calls.is_empty());
            assert!(events(&mut vm).is_empty());
            assert_eq!(vm.state(), from);
        }
    }
}

#[test]
fn wakeup_when_not_suspended_is_the_qemu_error() {
    for from in RunState::ALL
        .into_iter()
        .filter(|&s| s != RunState::Suspended)
    {
        let mut vm = vm_in(from);
        vm.start_on_wakeup_request();
        let err = vm.wakeup_request(WakeupReason::Other).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Unable to wake up: guest is not in suspended state"
        );
        assert!(matches!(err, Error::NotSuspended { state } if state == from));
        assert_eq!(vm.state(), from);
        assert!(vm.start_on_wakeup_requested());
    }
}

#[test]
fn system_wakeup_without_support_is_the_qemu_error() {
    let mut vm = vm_in(RunState::Suspended);
    let err = vm.system_wakeup().unwrap_err();
    assert!(matches!(err, Error::WakeupNotSupported));
    assert_eq!(
        err.to_string(),
        "wake-up from suspend is not supported by this guest"
    );
    assert_eq!(vm.state(), RunState::Suspended);
}

#[test]
fn masked_wakeup_reason_is_ignored() {
    let mut vm = cpr_load_suspended(true);
    assert_eq!(vm.wakeup_reasons(), WakeupReasons::QEMU_DEFAULT);
    // NONE is masked by default.
    vm.wakeup_request(WakeupReason::None).unwrap();
    vm.set_wakeup_reason_enabled(WakeupReason::Rtc, false);
    vm.wakeup_request(WakeupReason::Rtc).unwrap();
    vm.process_requests().unwrap();
    assert_eq!(vm.state(), RunState::Suspended);
    assert!(vm.start_on_wakeup_requested());
    assert!(events(&mut vm).is_empty());
    assert!(vm.machine().calls.is_empty());

    vm.set_wakeup_reason_enabled(WakeupReason::Rtc, true);
    vm.wakeup_request(WakeupReason::Rtc).unwrap();
    assert_eq!(vm.wakeup_pending(), WakeupReason::Rtc);
    vm.process_requests().unwrap();
    assert_eq!(events(&mut vm), [Event::Resume, Event::Wakeup]);
}

#[test]
fn cpr_load_suspended_into_paused_vm_is_an_error_not_an_abort() {
    // V7 QEMU aborts here: paused -> suspended is not in the table.
    let mut vm = VmRunState::new(Mock::default());
    vm.runstate_set(RunState::Paused).unwrap(); // prelaunch -> paused (series edge)
    match vm.runstate_set(RunState::Suspended) {
        Err(Error::InvalidTransition { from, to }) => {
            assert_eq!((from, to), (RunState::Paused, RunState::Suspended));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(vm.state(), RunState::Paused);
}

#[test]
fn runstate_set_matrix() {
    for from in RunState::ALL {
        for to in RunState::ALL {
            let mut vm = vm_in(from);
            let listed = TRANSITIONS.contains(&(from, to));
            match vm.runstate_set(to) {
                Ok(()) => {
                    assert!(listed || from == to, "{from} -> {to} accepted");
                    assert_eq!(vm.state(), to);
                }
                Err(Error::InvalidTransition { from: f, to: t }) => {
                    assert!(!listed && from != to, "{from} -> {to} rejected");
                    assert_eq!((f, t), (from, to));
                    assert_eq!(vm.state(), from);
                }
                Err(e) => panic!("{from} -> {to}: {e}"),
            }
            assert!(vm.machine().calls.is_empty(), "runstate_set is bookkeeping");
            assert!(events(&mut vm).is_empty());
        }
    }
}

#[test]
fn suspend_request_raced_by_a_stop_is_an_error() {
    let mut vm = vm_in(RunState::Running);
    vm.suspend_request();
    vm.vm_stop(RunState::Paused).unwrap();
    assert!(matches!(
        vm.process_suspend(),
        Err(Error::InvalidTransition {
            from: RunState::Paused,
            to: RunState::Suspended
        })
    ));
    assert!(!vm.suspend_requested(), "request consumed, as in QEMU");
}

#[test]
fn machine_failure_leaves_state_and_flag_for_a_retry() {
    let mut vm = cpr_load_suspended(true);
    vm.machine_mut().fail = Some(ControlOp::ResumeVcpus);
    let err = vm.wakeup_request(WakeupReason::Other).unwrap_err();
    assert!(matches!(
        err,
        Error::Machine {
            op: ControlOp::ResumeVcpus,
            ..
        }
    ));
    assert_eq!(err.to_string(), "machine failed to resume vcpus");
    assert_eq!(vm.state(), RunState::Suspended);
    assert!(vm.start_on_wakeup_requested());
    assert_eq!(vm.wakeup_pending(), WakeupReason::None);
    assert!(events(&mut vm).is_empty());

    vm.machine_mut().fail = None;
    vm.wakeup_request(WakeupReason::Other).unwrap();
    vm.process_wakeup().unwrap();
    assert_eq!(events(&mut vm), [Event::Resume, Event::Wakeup]);
}

#[derive(Debug, Clone)]
enum Op {
    Start,
    Stop(RunState),
    StopRequest(RunState),
    Suspend,
    Wakeup(WakeupReason),
    SystemWakeup,
    ArmStartOnWakeup,
    Mask(WakeupReason, bool),
    MainLoop,
}

fn any_op() -> impl Strategy<Value = Op> {
    let state = proptest::sample::select(RunState::ALL.to_vec());
    let reason = proptest::sample::select(WakeupReason::ALL.to_vec());
    prop_oneof![
        Just(Op::Start),
        state.clone().prop_map(Op::Stop),
        state.prop_map(Op::StopRequest),
        Just(Op::Suspend),
        reason.clone().prop_map(Op::Wakeup),
        Just(Op::SystemWakeup),
        Just(Op::ArmStartOnWakeup),
        (reason, any::<bool>()).prop_map(|(r, b)| Op::Mask(r, b)),
        Just(Op::MainLoop),
    ]
}

proptest! {
    /// Whatever the sequence of operations (bookkeeping-only `runstate_set`
    /// aside), nothing panics, vCPUs only run while the state is `running`,
    /// and `query-status` agrees with the state.
    #[test]
    fn random_operations_keep_invariants(ops in proptest::collection::vec(any_op(), 0..40)) {
        let mut vm = VmRunState::new(Mock::default());
        vm.register_wakeup_support();
        for op in ops {
            let _ = match op {
                Op::Start => vm.vm_start(),
                Op::Stop(s) => vm.vm_stop(s),
                Op::StopRequest(s) => { vm.vmstop_request(s); Ok(()) }
                Op::Suspend => { vm.suspend_request(); Ok(()) }
                Op::Wakeup(r) => vm.wakeup_request(r),
                Op::SystemWakeup => vm.system_wakeup(),
                Op::ArmStartOnWakeup => { vm.start_on_wakeup_request(); Ok(()) }
                Op::Mask(r, b) => { vm.set_wakeup_reason_enabled(r, b); Ok(()) }
                Op::MainLoop => vm.process_requests(),
            };
            prop_assert!(!vm.machine().vcpus_running || vm.is_running());
            prop_assert_eq!(vm.query_status().running, vm.state() == RunState::Running);
            for e in vm.drain_events() {
                prop_assert!(matches!(
                    e.event,
                    Event::Stop | Event::Resume | Event::Suspend | Event::Wakeup
                ));
            }
        }
    }
}
