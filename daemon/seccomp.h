/* daemon/seccomp.h — mqd's system-call allow-list (libseccomp).
 *
 * Owns: the list of system calls mqd makes once it has dropped its privileges, and the
 * seccomp filter that refuses every other one, so that a flaw a client can reach gets no
 * further into the kernel than mqd's own needs: no ptrace, mount, setuid, execve, keyctl,
 * kexec, module loading, new network sockets (socket() only for AF_UNIX), limit raising
 * (prlimit64 only reads) or BPF (bpf() only to read the probes' maps, when they loaded).
 * The unit's SystemCallFilter= says the same to systemd; this filter is the one mqd always
 * runs under (tests included), with or without systemd.
 *
 * Modes (config "seccomp"):
 *   on   (default) a refused call fails with EPERM and mqd logs its number (the first
 *        MQD_SECCOMP_LOG_MAX of them); mqctl status counts them and names the last;
 *   kill a refused call kills mqd with SIGSYS (what SystemCallFilter= does by default);
 *   off  no filter.
 * On architectures other than x86-64 "on" behaves like an EPERM filter without the log.
 *
 * Not covered: operations mqd hands to io_uring run in the kernel's workers, where seccomp
 * does not look (mqd submits reads of its own files, accepts, futex waits and timers).
 *
 * Who calls it: privs.c (mqd_privs_drop, after no_new_privs; applies to every thread),
 * admin.c (status). Thread rules: install once; the counters may be read from any thread.
 */
#ifndef MQ_DAEMON_SECCOMP_H
#define MQ_DAEMON_SECCOMP_H

#include <stddef.h>
#include <stdint.h>

enum mqd_seccomp_mode { MQD_SECCOMP_ON = 0, MQD_SECCOMP_KILL = 1, MQD_SECCOMP_OFF = 2 };

#define MQD_SECCOMP_LOG_MAX 20

/* Installs the filter (no-op for OFF). with_bpf: the probes are loaded, so bpf() may read
 * their maps. Sets no_new_privs itself (the kernel requires it without CAP_SYS_ADMIN).
 * 0 or a negative errno with a message. */
int mqd_seccomp_install(enum mqd_seccomp_mode mode, int with_bpf, char *err, size_t errlen);

/* Calls refused so far ("on" mode) and the number of the last one (-1: none). */
uint64_t mqd_seccomp_refused(int *last_nr);

/* The name of system call nr on this architecture into buf ("?" if unknown). */
const char *mqd_seccomp_name(int nr, char *buf, size_t len);

#endif
