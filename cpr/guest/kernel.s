# cpr built-in guest: the kernel part (CPL0).
#
# On this host (kvm-pvm, see docs/HOST-KVM.md) every CPL0 instruction is
# EMULATED at ~1.5 M instructions/s and many instructions fail in the emulator. So this
# kernel is deliberately tiny and uses only plain integer instructions, mov to/from control
# registers, lgdt/lidt/ltr, in/out, iretq and hlt. It must NOT use: xsave*/xgetbv, popcnt,
# cmpxchg16b, x87/SSE arithmetic, int3, int n, vmcall, rdtscp, stac/clac, lar/lsl/verw,
# invpcid, monitor/mwait.
#
# Entry (all vCPUs, set up by the VMM, see src/machine/layout.rs):
#   64-bit long mode, CPL0, IF=0, boot page tables (identity map 0..4 GiB),
#   RSI = boot info, RDI = vCPU index (0 = BSP), RSP = top of this vCPU's kernel stack.
#
# What it does:
#   BSP:  check the boot magic, print a banner on COM1, build the final page tables,
#         fill the IDT, mask the legacy PIC, release the APs.
#   all:  load the final GDT (with its own TSS), IDT and CR3, start the xAPIC periodic
#         timer, then iretq to the user workload at CPL3 (RDI = vCPU index).
#   ISRs: timer (count a tick, EOI), suspend request (EOI, write S3 to PM1a_CNT: the VMM
#         parks all vCPUs on that write and the guest continues right after it on wakeup),
#         exceptions 0..31 (report vector/RIP/error code/CR2/CS to the test device, halt),
#         and two test-only failures on request (x-guest-fault: triple fault, kernel #UD).
#
# The vCPU index inside ISRs is derived from the stack pointer: every vCPU only ever runs
# on its own 16 KiB kernel stack (TSS.RSP0 points there), so index = (rsp - KERNEL_STACKS) >> 14.

    .intel_syntax noprefix
    .code64
    .include "layout.inc"

    .equ LAPIC_SVR,   0xF0
    .equ LAPIC_EOI,   0xB0
    .equ LAPIC_LVTT,  0x320
    .equ LAPIC_TMICT, 0x380
    .equ LAPIC_TDCR,  0x3E0
    .equ PTE_P_RW,    0x3          # present | writable
    .equ PTE_US,      0x4          # user-accessible
    .equ PTE_PS,      0x80         # 2 MiB page

    .text
    .globl _start
_start:
    mov r15, rdi                    # r15 = vCPU index (kept for the whole boot path)
    mov r14, rsi                    # r14 = boot info
    mov r13, r15                    # r13 = this vCPU's test-device register block
    shl r13, 7                      #   (TESTDEV_VCPU_STRIDE = 0x80)
    mov eax, TESTDEV_BASE
    add r13, rax
    mov qword ptr [r13 + TD_STAGE], STAGE_ENTRY

    test r15, r15
    jnz wait_for_bsp

# ---------------------------------------------------------------- BSP only
    movabs rax, BOOT_MAGIC
    cmp [r14 + BI_MAGIC], rax
    je 1f
    mov qword ptr [r13 + TD_STAGE], STAGE_BAD_MAGIC
    jmp halt_forever
1:
    lea rsi, [rip + msg_banner]
    call puts
    mov rax, [r14 + BI_VCPUS]
    call putdec
    lea rsi, [rip + msg_ram]
    call puts
    mov rax, [r14 + BI_RAM_SIZE]
    shr rax, 20
    call putdec
    lea rsi, [rip + msg_hz]
    call puts
    mov rax, [r14 + BI_TIMER_HZ]
    call putdec
    lea rsi, [rip + msg_nl]
    call puts

    call build_page_tables
    call build_idt

    # Mask both legacy 8259 PICs: all interrupts come through the LAPIC.
    mov al, 0xff
    out 0x21, al
    out 0xa1, al

    mov qword ptr [r13 + TD_STAGE], STAGE_SHARED
    mov byte ptr [rip + ap_go], 1   # release the APs
    jmp per_cpu

# ---------------------------------------------------------------- APs
wait_for_bsp:
    pause
    cmp byte ptr [rip + ap_go], 0
    je wait_for_bsp

# ---------------------------------------------------------------- every vCPU
per_cpu:
    # Final GDT and segment registers. CS is reloaded with a far return.
    lgdt [rip + gdt_ptr]
    mov eax, SEL_KERNEL_DATA
    mov ds, eax
    mov es, eax
    mov ss, eax
    xor eax, eax
    mov fs, eax
    mov gs, eax
    push SEL_KERNEL_CODE
    lea rax, [rip + 2f]
    push rax
    retfq
2:
    # This vCPU's TSS: RSP0 = top of its kernel stack, no I/O bitmap.
    lea rdi, [rip + tss_array]
    mov rax, r15
    shl rax, 7                      # 128 bytes per TSS
    add rdi, rax                    # rdi = TSS address (< 4 GiB)
    mov rax, r15
    inc rax
    shl rax, 14                     # KERNEL_STACK_SIZE = 16 KiB
    add rax, KERNEL_STACKS
    mov [rdi + 4], rax              # TSS.RSP0
    mov word ptr [rdi + 102], 104   # I/O map base beyond the limit: no I/O bitmap
    # 16-byte TSS descriptor: limit 0x67, type 0x9 (available 64-bit TSS), present.
    mov rax, rdi
    and eax, 0xffffff
    shl rax, 16                     # base[23:0] -> bits 16..39
    mov rcx, rdi
    shr rcx, 24
    and ecx, 0xff
    shl rcx, 56                     # base[31:24] -> bits 56..63
    or rax, rcx
    movabs rcx, 0x0000890000000067
    or rax, rcx
    lea rdx, [rip + gdt_tss]
    mov rcx, r15
    shl rcx, 4
    mov [rdx + rcx], rax
    mov qword ptr [rdx + rcx + 8], 0
    add ecx, SEL_TSS0
    ltr cx

    lidt [rip + idt_ptr]
    mov eax, PT_PML4
    mov cr3, rax                    # switch to the final page tables

    # xAPIC: software-enable, periodic timer on TIMER_VECTOR, divide by 1.
    mov ebx, LAPIC_BASE
    mov dword ptr [rbx + LAPIC_SVR], 0x100 | SPURIOUS_VECTOR
    mov dword ptr [rbx + LAPIC_TDCR], 0xB
    mov dword ptr [rbx + LAPIC_LVTT], TIMER_VECTOR | (1 << 17)
    mov eax, [r14 + BI_LAPIC_COUNT]
    mov [rbx + LAPIC_TMICT], eax    # starts the timer (masked by IF=0 until iretq)
    mov qword ptr [r13 + TD_STAGE], STAGE_PERCPU

    test r15, r15
    jnz 3f
    lea rsi, [rip + msg_user]
    call puts
3:
    mov qword ptr [r13 + TD_STAGE], STAGE_USER
    # iretq frame to the user workload: SS, RSP, RFLAGS (IF=1), CS, RIP.
    mov rax, r15
    inc rax
    shl rax, 14                     # USER_STACK_SIZE = 16 KiB
    add rax, USER_STACKS
    push SEL_USER_DATA
    push rax
    push 0x202
    push SEL_USER_CODE
    push USER_LOAD
    mov rdi, r15                    # user arg 0: vCPU index
    mov esi, BOOT_INFO              # user arg 1: boot info
    xor eax, eax
    xor ebx, ebx
    xor ecx, ecx
    xor edx, edx
    iretq

halt_forever:
    cli
    hlt
    jmp halt_forever

# ---------------------------------------------------------------- page tables
# Identity map [0, mapped_gib GiB) with 2 MiB pages, supervisor-only, then set the
# user bit on the user page, the workload region and the test-device page.
build_page_tables:
    mov edi, PT_PML4
    mov eax, PT_PDPT | PTE_P_RW | PTE_US
    mov [rdi], rax
    mov rcx, [r14 + BI_MAPPED_GIB]
    mov edi, PT_PDPT
    mov eax, PT_PD | PTE_P_RW | PTE_US
1:  mov [rdi], rax
    add rax, PAGE_SIZE
    add rdi, 8
    dec rcx
    jnz 1b
    mov rcx, [r14 + BI_MAPPED_GIB]
    shl rcx, 9                      # 512 PDEs per GiB
    mov edi, PT_PD
    mov eax, PTE_P_RW | PTE_PS
2:  mov [rdi], rax
    add rax, HUGE_PAGE_SIZE
    add rdi, 8
    dec rcx
    jnz 2b
    mov eax, USER_LOAD
    lea rdx, [rax + HUGE_PAGE_SIZE]
    call mark_user
    mov rax, [r14 + BI_WL_BASE]
    mov rdx, rax
    add rdx, [r14 + BI_WL_SIZE]
    call mark_user
    mov eax, TESTDEV_BASE
    lea rdx, [rax + HUGE_PAGE_SIZE]
    call mark_user
    ret

# Set PTE_US on the PDEs covering [rax, rdx) (2 MiB aligned).
mark_user:
    cmp rax, rdx
    jae 9f
    mov rcx, rax
    shr rcx, 21
    or qword ptr [PT_PD + rcx * 8], PTE_US
    add rax, HUGE_PAGE_SIZE
    jmp mark_user
9:  ret

# ---------------------------------------------------------------- IDT
# Gates for exceptions 0..31 (stubs 16 bytes apart), the timer, the suspend request,
# the two x-guest-fault requests and the spurious vector. Other vectors stay not-present (a stray one raises #NP,
# reported like any exception with error code = vector * 8 + 2).
build_idt:
    xor ecx, ecx
    lea rax, [rip + exc_stubs]
1:  push rax
    push rcx
    call set_gate
    pop rcx
    pop rax
    add rax, 16
    inc ecx
    cmp ecx, 32
    jne 1b
    mov ecx, TIMER_VECTOR
    lea rax, [rip + timer_isr]
    call set_gate
    mov ecx, SUSPEND_VECTOR
    lea rax, [rip + suspend_isr]
    call set_gate
    mov ecx, FAULT_TRIPLE_VECTOR
    lea rax, [rip + triple_fault_isr]
    call set_gate
    mov ecx, FAULT_PANIC_VECTOR
    lea rax, [rip + panic_isr]
    call set_gate
    mov ecx, SPURIOUS_VECTOR
    lea rax, [rip + spurious_isr]
    call set_gate
    ret

# 64-bit interrupt gate for vector ecx -> handler rax (DPL0, selector 0x08, IST 0).
set_gate:
    lea rdx, [rip + idt]
    shl ecx, 4
    add rdx, rcx
    mov [rdx], ax                   # offset[15:0]
    mov word ptr [rdx + 2], SEL_KERNEL_CODE
    mov word ptr [rdx + 4], 0x8E00  # present, DPL0, 64-bit interrupt gate
    shr rax, 16
    mov [rdx + 6], ax               # offset[31:16]
    shr rax, 16
    mov [rdx + 8], eax              # offset[63:32]
    mov dword ptr [rdx + 12], 0
    ret

# ---------------------------------------------------------------- ISRs
# LAPIC timer: ticks[vcpu]++ (user-readable page), EOI. ~8 emulated instructions.
timer_isr:
    push rax
    mov rax, rsp
    sub rax, KERNEL_STACKS
    shr rax, 14
    inc qword ptr [TICKS + rax * 8]
    mov eax, LAPIC_BASE + LAPIC_EOI
    mov dword ptr [rax], 0
    pop rax
    iretq

# Suspend request (the VMM sends an MSI with this vector to the BSP): EOI, then enter
# "S3" by writing SLP_TYP=S3|SLP_EN to PM1a_CNT. The VMM parks every vCPU on that port
# write. Unlike real S3 there is no reset and no firmware waking vector: on wakeup the
# VMM resumes the vCPUs and execution continues with the instruction after the `out`.
suspend_isr:
    push rax
    push rdx
    mov eax, LAPIC_BASE + LAPIC_EOI
    mov dword ptr [rax], 0
    mov edx, PM1A_CNT_PORT
    mov eax, (PM1_SLP_TYP_S3 << PM1_SLP_TYP_SHIFT) | PM1_SLP_EN
    out dx, ax
    pop rdx
    pop rax
    iretq

spurious_isr:
    iretq

# Test only (QMP x-guest-fault, sent by the VMM as an MSI to APIC ID 0): fail on purpose.
# triple-fault: an empty IDT, then #UD. #UD finds no gate (#GP), nor does #GP (#DF), nor
# #DF: the CPU shuts down (KVM_EXIT_SHUTDOWN), as a real triple fault does.
triple_fault_isr:
    lidt [rip + null_idt_ptr]
    ud2
    jmp halt_forever

# panic: #UD in kernel mode, which exc_common reports to the test device as a fatal
# exception (the VMM's GUEST_PANICKED), then halts.
panic_isr:
    ud2
    jmp halt_forever

# Exception stubs: push a dummy error code where the CPU pushes none, push the vector.
    .macro EXC vec
    .balign 16
    .if (\vec == 8) || (\vec == 10) || (\vec == 11) || (\vec == 12) || (\vec == 13) || (\vec == 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
    push 0
    .endif
    push \vec
    jmp exc_common
    .endm

    .balign 16
exc_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    EXC \v
    .endr

# Stack: [rsp] vector, [rsp+8] error code, [rsp+16] RIP, [rsp+24] CS.
# Report to this vCPU's test-device block (vector last: it commits the report), halt.
exc_common:
    mov rax, rsp
    sub rax, KERNEL_STACKS
    shr rax, 14
    shl rax, 7
    mov ecx, TESTDEV_BASE
    add rax, rcx
    mov rcx, [rsp + 16]
    mov [rax + TD_EXC_RIP], rcx
    mov rcx, [rsp + 8]
    mov [rax + TD_EXC_ERROR], rcx
    mov rcx, cr2
    mov [rax + TD_EXC_CR2], rcx
    mov rcx, [rsp + 24]
    mov [rax + TD_EXC_CS], rcx
    mov rcx, [rsp]
    mov [rax + TD_EXC_VECTOR], rcx
    jmp halt_forever

# ---------------------------------------------------------------- COM1 output
# puts: print the NUL-terminated string at rsi.
puts:
    mov edx, COM1_PORT
1:  lodsb
    test al, al
    jz 2f
    out dx, al
    jmp 1b
2:  ret

# putdec: print rax in decimal.
putdec:
    sub rsp, 32
    lea rsi, [rsp + 31]
    mov byte ptr [rsi], 0
    mov ecx, 10
1:  xor edx, edx
    div rcx
    add dl, '0'
    dec rsi
    mov [rsi], dl
    test rax, rax
    jnz 1b
    call puts
    add rsp, 32
    ret

msg_banner: .asciz "cpr-guest: kernel up, vcpus="
msg_ram:    .asciz " ram_mib="
msg_hz:     .asciz " timer_hz="
msg_user:   .asciz "cpr-guest: entering user mode\n"
msg_nl:     .asciz "\n"

# ---------------------------------------------------------------- data
    .balign 8
ap_go:
    .quad 0

    .balign 16
gdt:
    .quad 0                         # 0x00 null
    .quad 0x00af9b000000ffff        # 0x08 kernel code: 64-bit, DPL0
    .quad 0x00cf93000000ffff        # 0x10 kernel data: DPL0
    .quad 0x00cff3000000ffff        # 0x18 user data: DPL3 (selector 0x1b)
    .quad 0x00affb000000ffff        # 0x20 user code: 64-bit, DPL3 (selector 0x23)
gdt_tss:                            # 0x28 + 16 * n: TSS descriptor of vCPU n
    .fill MAX_VCPUS * 16, 1, 0
gdt_end:

    .balign 8
    .word 0, 0, 0
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

    .word 0, 0, 0
idt_ptr:
    .word 256 * 16 - 1
    .quad idt

    .word 0, 0, 0
null_idt_ptr:                       # x-guest-fault triple-fault: no gate at all
    .word 0
    .quad 0

    .balign 16
tss_array:                          # 128 bytes per vCPU (a 64-bit TSS is 104 bytes)
    .fill MAX_VCPUS * 128, 1, 0

    .balign 4096
idt:
    .fill 256 * 16, 1, 0
