# End-to-end checks of the vgg-train command on a synthetic data set (no download, no timing):
# a short training run must learn, a resumed run must equal an uninterrupted one byte for byte,
# and bad input must give a clear message with the documented exit status.
set(data "${WORK}/data")
file(REMOVE_RECURSE "${WORK}")
execute_process(COMMAND "${MAKE_DATA}" "${data}" 640 200 RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "could not write the synthetic data set")
endif()

function(run_train out_var rc_var)
  # TIMEOUT: a damaged checkpoint once looped for two billion epochs; hangs must fail the test.
  execute_process(COMMAND "${TRAIN}" --data "${data}" --resize 32 --threads 2 ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 300)
  set(${out_var} "${out}${err}" PARENT_SCOPE)
  set(${rc_var} "${rc}" PARENT_SCOPE)
endfunction()

function(run_raw out_var rc_var)
  execute_process(COMMAND "${TRAIN}" ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
  set(${out_var} "${out}${err}" PARENT_SCOPE)
  set(${rc_var} "${rc}" PARENT_SCOPE)
endfunction()
function(expect_raw expected_rc pattern)
  run_raw(out rc ${ARGN})
  if(NOT rc EQUAL ${expected_rc} OR NOT out MATCHES "${pattern}")
    message(FATAL_ERROR "vgg-train ${ARGN}: expected exit ${expected_rc} and /${pattern}/, got exit ${rc}:\n${out}")
  endif()
endfunction()
# 1. A smoke training run learns: the loss falls and test accuracy beats chance (0.1) by far.
#    (VGG with PyTorch's default init needs ~100 steps to leave the plateau at log 10.)
run_train(out rc --epochs 5 --batch-size 16 --lr 2e-3 --save "${WORK}/new_dir/smoke.safetensors")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "smoke training failed (exit ${rc}):\n${out}")
endif()
string(REGEX MATCHALL "epoch [0-9]+, loss [0-9.]+, train acc [0-9.]+, test acc [0-9.]+, time [0-9.]+ sec" lines "${out}")
list(LENGTH lines n)
if(NOT n EQUAL 5)
  message(FATAL_ERROR "expected 5 epoch lines in the chapter's format, found ${n}:\n${out}")
endif()
list(GET lines 0 first)
list(GET lines 4 last)
string(REGEX REPLACE ".*loss ([0-9.]+),.*" "\\1" loss1 "${first}")
string(REGEX REPLACE ".*loss ([0-9.]+),.*" "\\1" loss5 "${last}")
string(REGEX REPLACE ".*test acc ([0-9.]+),.*" "\\1" acc5 "${last}")
if(NOT loss5 LESS loss1)
  message(FATAL_ERROR "the training loss did not fall (${loss1} -> ${loss5}):\n${out}")
endif()
if(NOT acc5 GREATER 0.5)
  message(FATAL_ERROR "test accuracy ${acc5} is not far above chance (0.1):\n${out}")
endif()
if(NOT EXISTS "${WORK}/new_dir/smoke.safetensors.metrics.jsonl")
  message(FATAL_ERROR "no metrics log was written")
endif()

# 2. Resume equivalence: 1 epoch + resume to 2 equals 2 uninterrupted epochs, byte for byte.
run_train(out rc --epochs 2 --limit 320 --save "${WORK}/straight.safetensors")
run_train(out rc --epochs 1 --limit 320 --save "${WORK}/resumed.safetensors")
run_train(out rc --epochs 2 --limit 320 --save "${WORK}/resumed.safetensors" --resume)
if(NOT rc EQUAL 0 OR NOT out MATCHES "resuming from")
  message(FATAL_ERROR "resume failed (exit ${rc}):\n${out}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${WORK}/straight.safetensors" "${WORK}/resumed.safetensors"
                RESULT_VARIABLE differ)
if(NOT differ EQUAL 0)
  message(FATAL_ERROR "the resumed run's checkpoint differs from the uninterrupted run's")
endif()

# 3. Evaluation mode reads the checkpoint back.
run_train(out rc --evaluate "${WORK}/new_dir/smoke.safetensors")
if(NOT rc EQUAL 0 OR NOT out MATCHES "test acc")
  message(FATAL_ERROR "--evaluate failed (exit ${rc}):\n${out}")
endif()

# 4. Bad input: message and exit status.
function(expect_failure expected_rc pattern)
  run_train(out rc ${ARGN})
  if(NOT rc EQUAL ${expected_rc} OR NOT out MATCHES "${pattern}")
    message(FATAL_ERROR "vgg-train ${ARGN}: expected exit ${expected_rc} and /${pattern}/, got exit ${rc}:\n${out}")
  endif()
endfunction()
expect_failure(2 "unknown option '--bogus'" --bogus)
expect_failure(2 "--batch-size 0 is out of range: expected 1 to 2147483647" --batch-size 0)
expect_failure(2 "--lr must be positive, found 0" --lr 0)
expect_failure(2 "--lr expects a number, found 'fast'" --lr fast)
expect_raw(2 "--resize 100 is not instantiated" --data "${data}" --resize 100)
expect_failure(2 "--width-divisor 3 is not instantiated" --width-divisor 3)
expect_failure(2 "--optimizer must be adam or sgd" --optimizer rmsprop)
expect_raw(1 "scripts/fetch_data.sh" --data "${WORK}/missing" --resize 32)
expect_failure(1 "holds a network of architecture" --evaluate "${WORK}/new_dir/smoke.safetensors" --width-divisor 4)
expect_failure(2 "trained with batch_size = 64, but this run has batch_size = 32"
               --epochs 3 --limit 320 --save "${WORK}/resumed.safetensors" --resume --batch-size 32)
file(WRITE "${data}/t10k-labels-idx1-ubyte" "garbage")
expect_failure(1 "t10k-labels-idx1-ubyte" --epochs 1 --limit 64 --save "${WORK}/x.safetensors")

# 5. Reliability (issue 12): each case failed on the code before it. Fresh data first (the last
#    case above damaged the labels).
execute_process(COMMAND "${MAKE_DATA}" "${data}" 640 200 RESULT_VARIABLE rc)
function(expect_unchanged file copy what)
  execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${file}" "${copy}" RESULT_VARIABLE differ)
  if(NOT differ EQUAL 0)
    message(FATAL_ERROR "${what} changed the checkpoint '${file}'")
  endif()
endfunction()

# Numbers: out of range with the range, negative unsigned values refused, lr shown in %g.
expect_failure(2 "--epochs 2147483648 is out of range: expected 1 to 2147483647" --epochs 2147483648)
expect_failure(2 "--lr 1e40 is out of range: expected a positive number from" --lr 1e40)
expect_failure(2 "--lr 1e-50 is out of range: .*found 1e-50" --lr 1e-50)
expect_failure(2 "--seed expects an integer from 0 to 18446744073709551615, found '-1'" --seed -1)
expect_failure(2 "--limit expects an integer from 0 to [0-9]+, found '-1'" --limit -1)
expect_raw(2 "--threads 100000 is out of range: expected 0 to 256" --threads 100000)
expect_raw(2 "--threads 1000 is out of range: expected 0 to 256" --threads 1000)
# Flags: duplicates named, contradictions and empty paths refused.
expect_failure(2 "--lr is given twice" --lr 1e-3 --lr 1e-2)
expect_raw(2 "--threads is given twice" --threads 1 --threads 2)
expect_failure(2 "--evaluate and --resume contradict" --evaluate "${WORK}/new_dir/smoke.safetensors" --resume)
# --distributed without MPI: refused by the binary (--device cuda too: it is no usage error, the
# NCCL path is tested under mpirun in tests/distributed/vgg_train_distributed_cuda.cmake).
if(NOT HAVE_MPI)
  expect_failure(1 "--distributed: this vgg-train was built without MPI" --distributed --epochs 1 --limit 64
                 --save "${WORK}/no_mpi.safetensors")
  expect_failure(1 "--distributed: this vgg-train was built without MPI" --distributed --device cuda --epochs 1
                 --limit 64 --save "${WORK}/no_mpi_cuda.safetensors")
endif()
# (An empty argument does not survive a CMake list, so this one is spelled out.)
execute_process(COMMAND "${TRAIN}" --data "${data}" --save "" RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "--save needs a non-empty path")
  message(FATAL_ERROR "--save \"\": expected exit 2 and a message, got exit ${rc}:\n${err}")
endif()
# --data naming a file.
file(WRITE "${WORK}/afile" "not a directory")
expect_raw(1 "--data '${WORK}/afile' is a file, not a directory" --data "${WORK}/afile" --resize 32 --epochs 1)

# A fresh run does not overwrite an existing checkpoint unless --overwrite says so.
set(ckpt "${WORK}/straight.safetensors")
file(COPY_FILE "${ckpt}" "${WORK}/straight.copy")
expect_failure(2 "already exists; add --resume to continue that run, or --overwrite" --epochs 1 --limit 64 --save "${ckpt}")
expect_unchanged("${ckpt}" "${WORK}/straight.copy" "a fresh run without --overwrite")

# A run whose loss turns NaN (lr 1e30) stops naming the step and advising a lower lr, and leaves
# the last good checkpoint intact.
run_train(out rc --epochs 1 --limit 64 --batch-size 16 --lr 1e30 --overwrite --save "${ckpt}")
if(NOT rc EQUAL 1 OR NOT out MATCHES "training stopped at step [0-9]+ \\(epoch 1\\)" OR NOT out MATCHES "lower it \\(--lr\\)"
   OR NOT out MATCHES "no checkpoint was written")
  message(FATAL_ERROR "a diverging run did not stop with the expected message (exit ${rc}):\n${out}")
endif()
expect_unchanged("${ckpt}" "${WORK}/straight.copy" "a diverging run")
run_train(out rc --epochs 1 --limit 64 --overwrite --save "${WORK}/overwritten.safetensors")
run_train(out rc --epochs 1 --limit 64 --overwrite --save "${WORK}/overwritten.safetensors")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "--overwrite did not replace the checkpoint (exit ${rc}):\n${out}")
endif()

# --save and --log must be writable regular files: checked before the first epoch.
file(MAKE_DIRECTORY "${WORK}/a_directory.safetensors")
expect_failure(1 "--save '${WORK}/a_directory.safetensors' is not a regular file \\(a directory\\)"
               --epochs 1 --limit 64 --overwrite --save "${WORK}/a_directory.safetensors")
expect_failure(1 "--save '${WORK}/afile/x.safetensors': cannot create the directory"
               --epochs 1 --limit 64 --save "${WORK}/afile/x.safetensors")
run_train(out rc --epochs 1 --limit 64 --save "${WORK}/log_test.safetensors" --log "${WORK}/afile/log.jsonl")
if(NOT rc EQUAL 1 OR NOT out MATCHES "--log '${WORK}/afile/log.jsonl': cannot create the directory" OR out MATCHES "epoch 1,")
  message(FATAL_ERROR "an unwritable --log must be refused before the first epoch (exit ${rc}):\n${out}")
endif()
find_program(MKFIFO mkfifo)
if(MKFIFO)
  execute_process(COMMAND "${MKFIFO}" "${WORK}/fifo.safetensors")
  expect_failure(1 "is not a regular file \\(a device, FIFO or socket\\)"
                 --epochs 1 --limit 64 --overwrite --save "${WORK}/fifo.safetensors")
  expect_failure(1 "is not a regular file" --epochs 1 --limit 64 --save "${WORK}/fifolog.safetensors"
                 --log "${WORK}/fifo.safetensors")
  if(NOT IS_DIRECTORY "${WORK}/fifo.safetensors" AND NOT EXISTS "${WORK}/fifo.safetensors")
    message(FATAL_ERROR "the FIFO was removed")
  endif()
  execute_process(COMMAND test -p "${WORK}/fifo.safetensors" RESULT_VARIABLE not_fifo)
  if(NOT not_fifo EQUAL 0)
    message(FATAL_ERROR "the FIFO at --save was replaced")
  endif()
endif()
# A device node (needs root to create): never replaced by a regular file.
execute_process(COMMAND mknod "${WORK}/device.safetensors" c 1 3 RESULT_VARIABLE no_node ERROR_QUIET)
if(no_node EQUAL 0)
  expect_failure(1 "is not a regular file" --epochs 1 --limit 64 --overwrite --save "${WORK}/device.safetensors")
  execute_process(COMMAND test -c "${WORK}/device.safetensors" RESULT_VARIABLE not_device)
  if(NOT not_device EQUAL 0)
    message(FATAL_ERROR "the device node at --save was replaced")
  endif()
else()
  message(STATUS "vgg-train: skipped the device-node case (mknod needs root)")
endif()

# lr is stored exactly: a run at 1e-7 does not resume at 4e-7.
run_train(out rc --epochs 1 --limit 64 --lr 1e-7 --save "${WORK}/tiny_lr.safetensors")
expect_failure(2 "trained with lr = 1.00000001e-07, but this run has lr = 4.00000005e-07"
               --epochs 2 --limit 64 --lr 4e-7 --resume --save "${WORK}/tiny_lr.safetensors")

# Damaged checkpoints: counters refused (no two-billion-epoch loop: see TIMEOUT above), NaN
# weights refused by --evaluate and --resume naming the tensor, with no advice to lower --lr.
foreach(change "train.epoch=2147483648" "train.epoch=-3" "train.epoch=4294967296" "train.network_step=-1"
               "optimizer.step=-1")
  execute_process(COMMAND "${MAKE_BAD}" "${WORK}/straight.safetensors" "${WORK}/bad.safetensors" "${change}"
                  RESULT_VARIABLE rc)
  string(REGEX REPLACE "=.*" "" counter "${change}")
  expect_failure(1 "counter '${counter}' is .*outside the valid range"
                 --epochs 3 --limit 320 --resume --save "${WORK}/bad.safetensors")
endforeach()
# A consistent-looking but forged epoch: the step counters give it away.
execute_process(COMMAND "${MAKE_BAD}" "${WORK}/straight.safetensors" "${WORK}/bad.safetensors" "train.epoch=1")
expect_failure(1 "is at epoch 1, which takes 5 steps with these settings, but its optimizer step is 10"
               --epochs 3 --limit 320 --resume --save "${WORK}/bad.safetensors")
execute_process(COMMAND "${MAKE_BAD}" "${WORK}/straight.safetensors" "${WORK}/nan.safetensors" nan-weight)
expect_failure(1 "weight tensor 'fc.7.bias' holds nan at element 0" --evaluate "${WORK}/nan.safetensors")
run_train(out rc --epochs 3 --limit 320 --resume --save "${WORK}/nan.safetensors")
if(NOT rc EQUAL 1 OR NOT out MATCHES "'fc.7.bias' holds nan" OR out MATCHES "lower")
  message(FATAL_ERROR "--resume of a NaN checkpoint: expected a refusal naming the tensor, no lr advice (exit ${rc}):\n${out}")
endif()

# Buffers are sized from what the run can use: a huge batch is capped at the data set, and runs
# in a 3 GB address space (8 GB before); the thread cap runs.
execute_process(COMMAND sh -c "ulimit -v 3000000 && exec \"$0\" \"$@\"" "${TRAIN}" --data "${data}" --resize 32
                        --evaluate "${WORK}/new_dir/smoke.safetensors" --batch-size 1000000
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT "${out}${err}" MATCHES "batches of 200 are used")
  message(FATAL_ERROR "--batch-size 1000000 on 200 test images: exit ${rc}:\n${out}${err}")
endif()
expect_raw(0 "test acc" --data "${data}" --resize 32 --evaluate "${WORK}/new_dir/smoke.safetensors" --threads 256)

# 6. --precision: the first line names the CPU, the kernels and the precision that runs. bf16 runs
#    where the CPU has AVX512-BF16 and the AVX-512 kernels are built; elsewhere the run says it is fp32.
file(READ /proc/cpuinfo cpuinfo)
if(FAST_KERNELS AND cpuinfo MATCHES "[ \t]avx512_bf16[ \n]")
  # ... and which bf16 kernel: AMX tiles where they run, else vdpbf16ps (saying why not AMX if the CPU has it).
  set(expected_precision "precision: bf16 \\(bf16 operands by (AMX-BF16 tiles|AVX512-BF16 vdpbf16ps)")
else()
  set(expected_precision "precision: fp32 \\(--precision bf16: ")
endif()
run_train(out rc --epochs 1 --limit 64 --batch-size 16 --precision bf16 --save "${WORK}/bf16.safetensors")
string(REGEX MATCH "^[^\n]*" first_line "${out}")
if(NOT rc EQUAL 0 OR NOT first_line MATCHES "^cpu: .*; kernels: cpu .*; ${expected_precision}")
  message(FATAL_ERROR "--precision bf16: expected a first line naming the CPU, kernels and /${expected_precision}/, "
                      "got exit ${rc}:\n${out}")
endif()
file(READ "${WORK}/bf16.safetensors.metrics.jsonl" metrics)
if(NOT metrics MATCHES "\"precision\": \"(bf16|fp32)\"")
  message(FATAL_ERROR "the metrics log does not name the precision:\n${metrics}")
endif()
run_train(out rc --epochs 2 --limit 64 --batch-size 16 --save "${WORK}/bf16.safetensors" --resume)
if(NOT rc EQUAL 2 OR NOT out MATCHES "trained with precision = bf16, but this run has precision = fp32")
  message(FATAL_ERROR "--resume of a bf16 run in fp32: expected a refusal (exit 2), got exit ${rc}:\n${out}")
endif()
run_train(out rc --evaluate "${WORK}/bf16.safetensors")
string(REGEX MATCH "^[^\n]*" first_line "${out}")
if(NOT rc EQUAL 0 OR NOT first_line MATCHES "^cpu: .*; precision: fp32$")
  message(FATAL_ERROR "--evaluate: expected the kernels line first, in fp32, got exit ${rc}:\n${out}")
endif()

message(STATUS "vgg-train: training, resume, evaluation and bad input behave as documented")
