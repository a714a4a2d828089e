# vgg-train --distributed --device cuda|auto under mpirun (run by CTest as `cmake -P` with MPIEXEC,
# TRAIN = vgg-train, MAKE_DATA = make_synthetic_idx, WORK, HAVE_NCCL), on a tiny synthetic data set:
#   - where every rank has a GPU (and vgg-train has NCCL): 1 rank trains on its GPU with the
#     gradient reduced in place by NCCL during backward (--overlap on) and after it (off), and the
#     checkpoint evaluates on the CPU; --device auto takes the GPU;
#   - elsewhere: --device cuda fails with exit 1 and the reason (no usable CUDA device, or a build
#     without NCCL), writing nothing; --device auto says it runs on the CPU and trains there; then
#     the GPU case prints VGG_SKIPPED (the test's SKIP_REGULAR_EXPRESSION).
file(REMOVE_RECURSE "${WORK}")
execute_process(COMMAND "${MAKE_DATA}" "${WORK}/data" 64 32 RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "could not write the synthetic data set")
endif()
set(common --distributed --data "${WORK}/data" --resize 32 --threads 1 --batch-size 16 --epochs 1)

# run(<name> args...): sets <name>_rc and <name>_out (stdout and stderr).
function(run name)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 90)
  set(${name}_rc "${rc}" PARENT_SCOPE)
  set(${name}_out "${out}${err}" PARENT_SCOPE)
endfunction()

set(ckpt "${WORK}/cuda/run.safetensors")
run(cuda "${MPIEXEC}" -np 1 "${TRAIN}" ${common} --device cuda --overlap on --save "${ckpt}")
if(cuda_rc EQUAL 0)
  # A GPU per rank: trained on it, over NCCL.
  if(NOT cuda_out MATCHES "kernels: cuda" OR NOT cuda_out MATCHES "1 rank [^\n]*, gradient overlap on"
     OR NOT cuda_out MATCHES "epoch 1, loss [0-9.]+, train acc")
    message(FATAL_ERROR "--distributed --device cuda --overlap on: expected a GPU run with overlap on:\n${cuda_out}")
  endif()
  run(off "${MPIEXEC}" -np 1 "${TRAIN}" ${common} --device cuda --overlap off --save "${WORK}/off.safetensors")
  if(NOT off_rc EQUAL 0 OR NOT off_out MATCHES "gradient overlap off" OR NOT off_out MATCHES "epoch 1, loss")
    message(FATAL_ERROR "--distributed --device cuda --overlap off failed (exit ${off_rc}):\n${off_out}")
  endif()
  run(eval "${TRAIN}" --data "${WORK}/data" --resize 32 --threads 1 --batch-size 16 --evaluate "${ckpt}")
  if(NOT eval_rc EQUAL 0 OR NOT eval_out MATCHES "test acc [0-9.]+")
    message(FATAL_ERROR "the NCCL run's checkpoint does not evaluate on the CPU (exit ${eval_rc}):\n${eval_out}")
  endif()
  run(auto "${MPIEXEC}" -np 1 "${TRAIN}" ${common} --device auto --save "${WORK}/auto.safetensors")
  if(NOT auto_rc EQUAL 0 OR auto_out MATCHES "runs on the CPU" OR NOT auto_out MATCHES "kernels: cuda")
    message(FATAL_ERROR "--distributed --device auto with a GPU must use it (exit ${auto_rc}):\n${auto_out}")
  endif()
  file(REMOVE_RECURSE "${WORK}")
  return()
endif()

# No GPU for this rank, or no NCCL in this build: a clear error, exit 1, nothing written.
if(HAVE_NCCL)
  set(reason "vgg-train: --distributed --device cuda: vgg::distributed: rank 0: .*(cudaGetDeviceCount|CUDA device)")
else()
  set(reason "vgg-train: --distributed --device cuda: this vgg-train was built without NCCL")
endif()
if(NOT cuda_rc EQUAL 1 OR NOT cuda_out MATCHES "${reason}")
  message(FATAL_ERROR "--distributed --device cuda without a GPU (HAVE_NCCL=${HAVE_NCCL}): expected exit 1 and "
                      "'${reason}', got exit ${cuda_rc}:\n${cuda_out}")
endif()
if(EXISTS "${ckpt}" OR EXISTS "${ckpt}.metrics.jsonl")
  message(FATAL_ERROR "--distributed --device cuda failed but wrote a checkpoint or a metrics log")
endif()
string(REGEX MATCH "vgg-train: --distributed --device cuda: [^\n]*" reason_line "${cuda_out}")

# --device auto: the fallback, said on the first line, then a CPU run.
run(auto "${MPIEXEC}" -np 1 "${TRAIN}" ${common} --device auto --save "${WORK}/auto.safetensors")
string(REGEX MATCH "^[^\n]*" first_line "${auto_out}")
if(NOT auto_rc EQUAL 0 OR NOT first_line MATCHES "^--device auto: .*; --distributed runs on the CPU$"
   OR NOT auto_out MATCHES "cpu: [^\n]*kernels: " OR NOT auto_out MATCHES "epoch 1, loss [0-9.]+")
  message(FATAL_ERROR "--distributed --device auto without a GPU: expected the fallback on the first line and a "
                      "CPU run, got exit ${auto_rc}:\n${auto_out}")
endif()
message(STATUS "VGG_SKIPPED: the GPU case (training over NCCL) needs a GPU per rank; here: ${reason_line}")
file(REMOVE_RECURSE "${WORK}")
