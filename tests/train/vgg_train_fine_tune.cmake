# vgg-train fine-tuning end to end on a tiny synthetic data set (a few seconds): a base run, then
# --init-from it with --freeze-features (every conv tensor bit-identical afterwards, every
# classifier tensor changed), --init-from a 5-class checkpoint (vgg-train's class count is fixed
# at 10, so fine_tune_helper writes it: the last layer is re-initialised, and vgg-train says so),
# and the refusals: another architecture (exit 1, tensor and shapes named), usage errors (exit 2),
# and --resume of a frozen run without --freeze-features (exit 2).
set(data "${WORK}/data")
file(REMOVE_RECURSE "${WORK}")
execute_process(COMMAND "${MAKE_DATA}" "${data}" 64 32 RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "could not write the synthetic data set")
endif()

function(run_train out_var rc_var)
  execute_process(COMMAND "${TRAIN}" --data "${data}" --resize 32 --width-divisor 8 --threads 2 --batch-size 16
                          --limit 32 ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
  set(${out_var} "${out}${err}" PARENT_SCOPE)
  set(${rc_var} "${rc}" PARENT_SCOPE)
endfunction()
function(expect_train expected_rc pattern)
  run_train(out rc ${ARGN})
  if(NOT rc EQUAL ${expected_rc} OR NOT out MATCHES "${pattern}")
    message(FATAL_ERROR "vgg-train ${ARGN}: expected exit ${expected_rc} and /${pattern}/, got exit ${rc}:\n${out}")
  endif()
endfunction()
include("${CMAKE_CURRENT_LIST_DIR}/compare_tensors.cmake")
# Checks that fine_tune_helper compare A B reports every conv tensor `conv` and every fc tensor `fc`
# (same | differs).
function(expect_compare a b conv fc)
  expect_compare_groups("${a}" "${b}" "vgg_block_[0-9.]+[a-z]+" 16 ${conv} "fc\\.[0-9.]+[a-z]+" 6 ${fc})
endfunction()

# 1. The base run, then a frozen fine-tuning run from it: conv tensors bit-identical, fc changed.
expect_train(0 "checkpoint:" --epochs 1 --save "${WORK}/base.safetensors")
expect_train(0 "fine-tuning from .*features frozen" --epochs 1 --lr 1e-2 --seed 2 --init-from "${WORK}/base.safetensors"
             --freeze-features --save "${WORK}/frozen.safetensors")
expect_compare("${WORK}/base.safetensors" "${WORK}/frozen.safetensors" same differs)
# Without --freeze-features the conv blocks train too.
expect_train(0 "fine-tuning from" --epochs 1 --lr 1e-2 --init-from "${WORK}/base.safetensors"
             --save "${WORK}/unfrozen.safetensors")
expect_compare("${WORK}/base.safetensors" "${WORK}/unfrozen.safetensors" differs differs)

# 2. A frozen run resumes frozen only.
expect_train(2 "freeze_features = true, but this run has freeze_features = false" --epochs 2 --resume
             --save "${WORK}/frozen.safetensors")
expect_train(0 "resuming from" --epochs 2 --lr 1e-2 --seed 2 --freeze-features --resume --save "${WORK}/frozen.safetensors")
expect_compare("${WORK}/base.safetensors" "${WORK}/frozen.safetensors" same differs)

# 3. A 5-class checkpoint: the last layer is re-initialised, said in one line; the rest is loaded.
execute_process(COMMAND "${HELPER}" write "${WORK}/five.safetensors" 5 8 RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "fine_tune_helper could not write the 5-class checkpoint")
endif()
expect_train(0 "the last layer fc\\.7 has 5 classes in '[^']*five\\.safetensors', this run 10: re-initialised it \\(seed 1\\)"
             --epochs 1 --freeze-features --init-from "${WORK}/five.safetensors" --save "${WORK}/from_five.safetensors")
expect_compare("${WORK}/five.safetensors" "${WORK}/from_five.safetensors" same differs)

# 4. Refusals: another width (exit 1, naming the tensor and both shapes), a missing file, usage errors.
execute_process(COMMAND "${HELPER}" write "${WORK}/wide.safetensors" 10 4 RESULT_VARIABLE rc)
expect_train(1 "tensor 'vgg_block_1\\.0\\.weight' expected shape \\[8,1,3,3\\], found \\[16,1,3,3\\]"
             --epochs 1 --init-from "${WORK}/wide.safetensors" --save "${WORK}/refused.safetensors")
expect_train(1 "no_such\\.safetensors" --epochs 1 --init-from "${WORK}/no_such.safetensors"
             --save "${WORK}/refused2.safetensors")
expect_train(2 "--init-from and --resume contradict" --init-from "${WORK}/base.safetensors" --resume
             --save "${WORK}/base.safetensors")
expect_train(2 "--init-from trains; --evaluate" --init-from "${WORK}/base.safetensors"
             --evaluate "${WORK}/base.safetensors")
