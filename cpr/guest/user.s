# cpr built-in guest: the user-mode workload (CPL3, runs natively at full speed).
#
# Entered by the kernel's iretq with RDI = vCPU index, RSI = boot info, IF=1.
#
# Each vCPU owns a slice of the workload region:
#   slice = (workload_size / vcpus) rounded down to 4 KiB, base = workload_base + index * slice.
# It walks its slice page by page. For every 8-byte word at physical address A it writes
#   pattern(A, gen) = mix(A ^ (gen << 40) ^ ((index + 1) << 56)),  mix(x) = y ^ (y >> 29), y = x * K
# and, before overwriting, checks that the word still holds pattern(A, gen - 1) (skipped in
# generation 0: after a fresh boot RAM holds zeroes). A mismatch increments the error count.
# After the last page of the slice the generation is incremented.
#
# The workload state (generation, cursor, progress = pages done, errors, last report TSC)
# lives in guest RAM (USER_STATE + index * 64) and is updated for every page, so it survives
# a checkpoint/restore of the VM together with RAM and continues from the saved values.
#
# Every BI_REPORT_TSC TSC cycles it reports generation, ticks (read from the kernel's
# user-readable tick page), errors and progress to its test-device block with four 8-byte
# MMIO writes (~25 us each on this host); the progress write completes the report.
# CPL3 cannot do port I/O on this host, hence MMIO.

    .intel_syntax noprefix
    .code64
    .include "layout.inc"

    .text
    .globl _start
_start:
    mov r15, rdi                    # r15 = vCPU index
    # r13 = slice size (4 KiB multiple), r12 = slice base, r11 = pages in the slice
    mov rax, [rsi + BI_WL_SIZE]
    xor edx, edx
    div qword ptr [rsi + BI_VCPUS]
    and rax, -PAGE_SIZE
    mov r13, rax
    mov r11, rax
    shr r11, 12
    mov rax, r15
    mul r13
    add rax, [rsi + BI_WL_BASE]
    mov r12, rax
    mov r10, [rsi + BI_REPORT_TSC]  # r10 = report interval in TSC cycles
    # rbx = workload state block, rbp = test-device block
    mov rbx, r15
    shl rbx, 6                      # USER_STATE_STRIDE = 64
    add rbx, USER_STATE
    mov rbp, r15
    shl rbp, 7                      # TESTDEV_VCPU_STRIDE = 0x80
    mov eax, TESTDEV_BASE
    add rbp, rax
    # r14 = per-vCPU salt, r13 = multiplier K (slice size no longer needed)
    lea r14, [r15 + 1]
    shl r14, 56
    movabs r13, 0x9E3779B97F4A7C15
    test r11, r11
    jz idle                         # empty slice (tiny workload region): only report
    mov r8, [rbx + US_GENERATION]   # r8 = generation
    mov r9, [rbx + US_CURSOR]       # r9 = page cursor

page:
    mov rdi, r9
    shl rdi, 12
    add rdi, r12                    # rdi = page address
    mov rsi, r8
    shl rsi, 40
    xor rsi, r14                    # rsi = seed of this generation
    test r8, r8
    jz write_only
    mov rcx, r8
    dec rcx
    shl rcx, 40
    xor rcx, r14                    # rcx = seed of the previous generation

check_write:                        # verify gen-1, write gen
    mov rax, rdi
    xor rax, rcx
    imul rax, r13
    mov rdx, rax
    shr rdx, 29
    xor rax, rdx
    cmp [rdi], rax
    jne mismatch
store:
    mov rax, rdi
    xor rax, rsi
    imul rax, r13
    mov rdx, rax
    shr rdx, 29
    xor rax, rdx
    mov [rdi], rax
    add rdi, 8
    test edi, PAGE_SIZE - 1
    jnz check_write
    jmp page_done

mismatch:
    inc qword ptr [rbx + US_ERRORS]
    jmp store

write_only:                         # generation 0 of a fresh boot: nothing to check
    mov rax, rdi
    xor rax, rsi
    imul rax, r13
    mov rdx, rax
    shr rdx, 29
    xor rax, rdx
    mov [rdi], rax
    add rdi, 8
    test edi, PAGE_SIZE - 1
    jnz write_only

page_done:
    inc r9
    cmp r9, r11
    jb 1f
    xor r9d, r9d                    # end of slice: next generation
    inc r8
    mov [rbx + US_GENERATION], r8
1:  mov [rbx + US_CURSOR], r9
    inc qword ptr [rbx + US_PROGRESS]
    call maybe_report
    jmp page

idle:
    call maybe_report
    pause
    jmp idle

# Report if at least r10 TSC cycles passed since the last report.
maybe_report:
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov rdx, rax
    sub rdx, [rbx + US_LAST_REPORT]
    cmp rdx, r10
    jb 2f
    mov [rbx + US_LAST_REPORT], rax
    mov rax, [rbx + US_GENERATION]
    mov [rbp + TD_GENERATION], rax
    mov rax, [TICKS + r15 * 8]
    mov [rbp + TD_TICKS], rax
    mov rax, [rbx + US_ERRORS]
    mov [rbp + TD_ERRORS], rax
    mov rax, [rbx + US_PROGRESS]
    mov [rbp + TD_PROGRESS], rax    # completes the report
2:  ret
