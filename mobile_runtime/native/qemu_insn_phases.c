// qemu_insn_phases: a QEMU TCG plugin (host shared object, loaded by qemu-aarch64 -plugin) that counts
// guest instructions per phase, the qemu-user counterpart of callgrind's toggle/dump markers in
// step_bench.cpp. The guest marks phases with getpid(MAGIC, code) (step_bench's phase_marker; getpid
// ignores its arguments, so the marker is harmless natively): code 1 toggles counting, code 2 closes
// the "prefill" phase, code 3 the "decode" phase. At exit one JSON line goes to the file named by
// the `out=PATH` plugin argument: {"prefill": N, "decode": N, "all": N} ("all": every instruction the
// guest executed, load and tear-down included).
//
//   qemu-aarch64 -L /usr/aarch64-linux-gnu -plugin build/libqemu_insn_phases.so,out=counts.json
//                build/step_bench MODEL.pte 16 32 --single-thread
//
// Counting is inline per translated block (one add per block executed, as QEMU's own insn plugin
// in its inline mode). The counter is not atomic: run the guest single-threaded.
//
// QEMU's plugin header is not packaged by Debian; the few entry points used here are declared as in
// QEMU's include/qemu/qemu-plugin.h, plugin API version 1 (QEMU 4.2 to 8.0; Debian 12 ships 7.2).
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t {
  const char* target_name;
  struct {
    int min;
    int cur;
  } version;
  bool system_emulation;
  union {
    struct {
      int smp_vcpus;
      int max_vcpus;
    } system;
  };
} qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void* userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb* tb);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                                              uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                                              uint64_t a6, uint64_t a7, uint64_t a8);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb* tb, enum qemu_plugin_op op, void* ptr,
                                              uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb* tb);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void* userdata);

EXPORT int qemu_plugin_version = 1;

enum { MARKER_MAGIC = 0x4d454b49 /* "MEKI" */, NR_GETPID_AARCH64 = 172 };
enum { CODE_TOGGLE = 1, CODE_DUMP_PREFILL = 2, CODE_DUMP_DECODE = 3 };

static uint64_t executed;    // every guest instruction (inline add per block)
static uint64_t since;       // `executed` when counting was last switched on
static uint64_t collected;   // instructions counted in the open phase
static bool collecting;
static uint64_t phase[2];    // prefill, decode
static char out_path[4096];

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb* tb) {
  (void)id;
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed, qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2, uint64_t a3,
                       uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8) {
  (void)id, (void)vcpu, (void)a3, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8;
  if (num != NR_GETPID_AARCH64 || a1 != MARKER_MAGIC) return;
  if (a2 == CODE_TOGGLE) {
    if (collecting) collected += executed - since;
    collecting = !collecting;
    since = executed;
  } else if (a2 == CODE_DUMP_PREFILL || a2 == CODE_DUMP_DECODE) {
    phase[a2 - CODE_DUMP_PREFILL] += collected;
    collected = 0;
  }
}

static void write_counts(qemu_plugin_id_t id, void* userdata) {
  (void)id, (void)userdata;
  FILE* f = fopen(out_path, "w");
  if (!f) {
    fprintf(stderr, "qemu_insn_phases: cannot write %s\n", out_path);
    return;
  }
  fprintf(f, "{\"prefill\": %" PRIu64 ", \"decode\": %" PRIu64 ", \"all\": %" PRIu64 "}\n", phase[0], phase[1],
          executed);
  fclose(f);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t* info, int argc, char** argv) {
  (void)info;
  for (int i = 0; i < argc; ++i) {
    if (strncmp(argv[i], "out=", 4) == 0) snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
  }
  if (!out_path[0]) {
    fprintf(stderr, "qemu_insn_phases: pass out=PATH (-plugin libqemu_insn_phases.so,out=counts.json)\n");
    return 1;
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
  qemu_plugin_register_atexit_cb(id, write_counts, NULL);
  return 0;
}
