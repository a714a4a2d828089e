# vgg-train --distributed end to end (run by CTest as `cmake -P` with MPIEXEC, TRAIN = vgg-train,
# MAKE_DATA = make_synthetic_idx, WORK), on a tiny synthetic IDX data set:
#   - 2 ranks train; the output is printed once and one checkpoint and one metrics log are written;
#   - the checkpoint resumes on 1 rank, which continues after the saved epoch;
#   - 1 rank of --distributed trains exactly as a plain run (byte-identical checkpoints);
#   - 2 ranks train the same bytes with the gradient reduced during backward or after it;
#   - ranks started on different data are refused, and write nothing.
file(REMOVE_RECURSE "${WORK}")
foreach(set data other)
  # "other": one image more, which only the data fingerprint sees before training starts.
  if(set STREQUAL "other")
    set(count 97)
  else()
    set(count 96)
  endif()
  execute_process(COMMAND "${MAKE_DATA}" "${WORK}/${set}" ${count} 40 RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "could not write the synthetic data set '${set}'")
  endif()
endforeach()
# 96 images, global batch 16: 6 steps per epoch, 3 images per rank and step on 2 ranks.
set(settings --resize 32 --threads 1 --batch-size 16 --lr 2e-3)
set(common --distributed --data "${WORK}/data" ${settings})

# run(<name> args...): sets <name>_rc and <name>_out (stdout and stderr).
function(run name)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
  set(${name}_rc "${rc}" PARENT_SCOPE)
  set(${name}_out "${out}${err}" PARENT_SCOPE)
endfunction()
function(count_matches out_var pattern text)
  string(REGEX MATCHALL "${pattern}" found "${text}")
  list(LENGTH found n)
  set(${out_var} ${n} PARENT_SCOPE)
endfunction()
function(read_lines out_var path)
  file(STRINGS "${path}" lines)
  set(${out_var} "${lines}" PARENT_SCOPE)
endfunction()

# 1. Two ranks, two epochs.
set(ckpt "${WORK}/two/run.safetensors")
run(two "${MPIEXEC}" --oversubscribe -np 2 "${TRAIN}" ${common} --epochs 2 --save "${ckpt}")
if(NOT two_rc EQUAL 0)
  message(FATAL_ERROR "2 ranks of vgg-train --distributed failed (exit ${two_rc}):\n${two_out}")
endif()
count_matches(headers "training Input<1,32,32>[^\n]*, 2 ranks" "${two_out}")
count_matches(epochs "epoch [0-9]+, loss [0-9.]+, train acc [0-9.]+, test acc [0-9.]+" "${two_out}")
count_matches(saved "checkpoint: " "${two_out}")
if(NOT headers EQUAL 1 OR NOT epochs EQUAL 2 OR NOT saved EQUAL 1)
  message(FATAL_ERROR "expected the header, 2 epoch lines and the checkpoint line once each (rank 0 alone prints), "
                      "found ${headers}, ${epochs} and ${saved}:\n${two_out}")
endif()
file(GLOB written RELATIVE "${WORK}/two" "${WORK}/two/*" "${WORK}/two/.*")
list(SORT written)
if(NOT written STREQUAL "run.safetensors;run.safetensors.metrics.jsonl")
  message(FATAL_ERROR "expected one checkpoint and one metrics log, found: ${written}")
endif()
read_lines(log "${ckpt}.metrics.jsonl")
list(LENGTH log n)
if(NOT n EQUAL 2 OR NOT log MATCHES "\"epoch\": 2,[^;]*\"ranks\": 2")
  message(FATAL_ERROR "expected 2 metrics lines written by one rank of 2, found ${n}:\n${log}")
endif()

# 2. Resume on 1 rank: continues with epoch 3 from the step counters of epoch 2.
run(resumed "${MPIEXEC}" --oversubscribe -np 1 "${TRAIN}" ${common} --epochs 3 --save "${ckpt}" --resume)
if(NOT resumed_rc EQUAL 0 OR NOT resumed_out MATCHES "resuming from '[^']*run.safetensors' after epoch 2"
   OR NOT resumed_out MATCHES "epoch 3, loss" OR resumed_out MATCHES "epoch [12], loss")
  message(FATAL_ERROR "resuming the 2-rank checkpoint on 1 rank failed (exit ${resumed_rc}):\n${resumed_out}")
endif()
read_lines(log "${ckpt}.metrics.jsonl")
list(LENGTH log n)
list(GET log -1 last)
if(NOT n EQUAL 3 OR NOT last MATCHES "\"epoch\": 3,.*\"ranks\": 1")
  message(FATAL_ERROR "expected a 3rd metrics line, for epoch 3 on 1 rank; found ${n} lines:\n${log}")
endif()

# 3. One rank of --distributed is a plain run: the same checkpoint, byte for byte.
run(plain "${TRAIN}" --data "${WORK}/data" ${settings} --epochs 1 --save "${WORK}/plain.safetensors")
run(one "${MPIEXEC}" -np 1 "${TRAIN}" ${common} --epochs 1 --save "${WORK}/one.safetensors")
if(NOT plain_rc EQUAL 0 OR NOT one_rc EQUAL 0)
  message(FATAL_ERROR "plain (exit ${plain_rc}) or 1-rank (exit ${one_rc}) run failed:\n${plain_out}\n${one_out}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${WORK}/plain.safetensors" "${WORK}/one.safetensors"
                RESULT_VARIABLE differ)
if(NOT differ EQUAL 0)
  message(FATAL_ERROR "1 rank of --distributed trained other weights than a plain run")
endif()

# 3b. Two ranks reduce the gradient during backward (--overlap on) or after it (off): on 2 ranks each
#     element's sum is one addition, so the checkpoints are the same bytes.
foreach(mode on off)
  run(overlap_${mode} "${MPIEXEC}" --oversubscribe -np 2 "${TRAIN}" ${common} --epochs 1 --overlap ${mode}
      --save "${WORK}/overlap_${mode}.safetensors")
  if(NOT overlap_${mode}_rc EQUAL 0 OR NOT overlap_${mode}_out MATCHES "2 ranks [^\n]*, gradient overlap ${mode}")
    message(FATAL_ERROR "2 ranks with --overlap ${mode} failed (exit ${overlap_${mode}_rc}):\n${overlap_${mode}_out}")
  endif()
endforeach()
if(NOT two_out MATCHES "gradient overlap off")  # auto: every rank on this host
  message(FATAL_ERROR "--overlap auto did not turn overlap off on one host:\n${two_out}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${WORK}/overlap_on.safetensors"
                "${WORK}/overlap_off.safetensors" RESULT_VARIABLE differ)
if(NOT differ EQUAL 0)
  message(FATAL_ERROR "--overlap on and off trained other weights on 2 ranks")
endif()

# 4. Rank 1 reads other data (MPMD launch): refused at start-up, nothing written.
set(refused_ckpt "${WORK}/refused/run.safetensors")
run(refused "${MPIEXEC}" --oversubscribe -np 1 "${TRAIN}" ${common} --epochs 1 --save "${refused_ckpt}"
    : -np 1 "${TRAIN}" --distributed --data "${WORK}/other" ${settings} --epochs 1 --save "${refused_ckpt}")
if(refused_rc EQUAL 0 OR NOT refused_out MATCHES "rank 1 disagrees with rank 0 on the data fingerprint")
  message(FATAL_ERROR "ranks on different data were not refused (exit ${refused_rc}):\n${refused_out}")
endif()
if(EXISTS "${refused_ckpt}" OR EXISTS "${refused_ckpt}.metrics.jsonl")
  message(FATAL_ERROR "a refused job wrote a checkpoint or a metrics log")
endif()
file(REMOVE_RECURSE "${WORK}")
