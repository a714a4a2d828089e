# vgg-train --model tv-* end to end on its small configuration (--resize 32 --width-divisor 32, a
# few seconds): fine-tuning from a torchvision-format 1000-class checkpoint (torchvision's names,
# no vgg metadata, as tools/torch_to_safetensors.py writes them) with --freeze-features must say
# what it loaded and re-initialised, keep every features tensor bit-identical, train the classifier
# and save torchvision's names with a 10-class classifier.6. Then --evaluate of the result, the
# committed torchvision golden vgg11_bn weights, and the refusals: another architecture's
# checkpoint (exit 1, naming the tensor and shapes), --resume with another --model and sizes that
# are not instantiated (exit 2).
set(data "${WORK}/data")
file(REMOVE_RECURSE "${WORK}")
execute_process(COMMAND "${MAKE_DATA}" "${data}" 64 32 RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "could not write the synthetic data set")
endif()

function(run_train out_var rc_var)
  execute_process(COMMAND "${TRAIN}" --data "${data}" --resize 32 --threads 2 --batch-size 16 --limit 32 ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
  set(${out_var} "${out}${err}" PARENT_SCOPE)
  set(${rc_var} "${rc}" PARENT_SCOPE)
endfunction()
function(expect_train expected_rc pattern)
  run_train(out rc ${ARGN})
  if(NOT rc EQUAL ${expected_rc} OR NOT out MATCHES "${pattern}")
    message(FATAL_ERROR "vgg-train ${ARGN}: expected exit ${expected_rc} and /${pattern}/, got exit ${rc}:\n${out}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()
function(helper)
  execute_process(COMMAND "${HELPER}" ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "fine_tune_helper ${ARGN} failed (exit ${rc}):\n${out}${err}")
  endif()
  set(helper_output "${out}" PARENT_SCOPE)
endfunction()
include("${CMAKE_CURRENT_LIST_DIR}/compare_tensors.cmake")
function(expect_shape file name expected)
  helper(shape "${file}" "${name}")
  string(STRIP "${helper_output}" found)
  if(NOT found STREQUAL "${expected}")
    message(FATAL_ERROR "${file}: tensor '${name}' expected shape ${expected}, found '${found}'")
  endif()
endfunction()

set(small --width-divisor 32)
set(base "${WORK}/tv16_1000.safetensors")
set(tuned "${WORK}/tuned.safetensors")
helper(write-tv "${base}" vgg16 1000)

# 1. Fine-tuning from the 1000-class checkpoint, features frozen. The lines right after the
#    kernels line say what was loaded and what was re-initialised.
expect_train(0 "fine-tuning from '[^']*tv16_1000\\.safetensors'\nfine-tuning: the last layer classifier\\.6 has 1000 classes in '[^']*tv16_1000\\.safetensors', this run 10: re-initialised it \\(seed 1\\)\ntraining .*features frozen"
             --model tv-vgg16 ${small} --epochs 1 --init-from "${base}" --freeze-features --save "${tuned}")
string(REGEX MATCH "^[^\n]*\n" first_line "${last_output}")
if(NOT first_line MATCHES "^cpu: .*kernels: ")
  message(FATAL_ERROR "the first line should be the cpu/kernels/precision line, found: ${first_line}")
endif()

# 2. The saved checkpoint: torchvision's names, a 10-class classifier.6, every features tensor
#    bit-identical to the file's (26 of vgg16: 13 convs), every classifier tensor changed.
expect_shape("${tuned}" classifier.6.weight "[10,128]")
expect_shape("${tuned}" classifier.6.bias "[10]")
expect_shape("${tuned}" classifier.0.weight "[128,784]")
expect_shape("${tuned}" features.28.weight "[16,16,3,3]")
expect_compare_groups("${base}" "${tuned}" "features\\.[0-9]+\\.[a-z]+" 26 same "classifier\\.[0-9]+\\.[a-z]+" 6 differs)

# 3. The result evaluates as the same model; the committed torchvision golden weights (vgg11_bn,
#    10 classes, so nothing is re-initialised) fine-tune as they are.
expect_train(0 "test loss [0-9.]+, test acc [0-9.]+ \\(32 images\\)" --model tv-vgg16 ${small} --evaluate "${tuned}")
expect_train(0 "fine-tuning from '[^']*torchvision_vgg11_bn_w32\\.safetensors'\ntraining .*TorchvisionClassifier<128,10,7"
             --model tv-vgg11_bn ${small} --epochs 1 --freeze-features
             --init-from "${GOLDEN}/torchvision_vgg11_bn_w32.safetensors" --save "${WORK}/bn.safetensors")
if(last_output MATCHES "re-initialised")
  message(FATAL_ERROR "a 10-class checkpoint needs no re-initialisation:\n${last_output}")
endif()

# 4. Refusals. Another architecture: exit 1, naming the tensor with its expected shape and what the
#    file holds (a vgg checkpoint names its network; a converted torchvision file has only its
#    tensor count to tell: vgg16's 32 against vgg11's 22).
helper(write "${WORK}/chapter.safetensors" 10 8)
expect_train(1 "cannot be fine-tuned from: it has no tensor 'features\\.0\\.weight' \\(expected shape \\[2,3,3,3\\], found none\\).*the file holds the network 'Input<1,32,32> VggBlock<1,1,8>"
             --model tv-vgg16 ${small} --epochs 1 --init-from "${WORK}/chapter.safetensors" --save "${WORK}/r1.safetensors")
expect_train(1 "cannot be fine-tuned from: it has no tensor 'features\\.3\\.weight' \\(expected shape \\[4,2,3,3\\], found none\\).*the file holds 32 tensors, this network 22"
             --model tv-vgg11 ${small} --epochs 1 --init-from "${base}" --save "${WORK}/r2.safetensors")
expect_train(1 "tensor 'vgg_block_1\\.0\\.weight'"
             --width-divisor 8 --epochs 1 --init-from "${base}" --save "${WORK}/r3.safetensors")
# --resume with another --model, or the chapter's net (the default): exit 2, before any weight is read.
expect_train(2 "--resume: the checkpoint '[^']*tuned\\.safetensors' was trained with model = tv-vgg16, but this run has model = tv-vgg11"
             --model tv-vgg11 ${small} --epochs 2 --freeze-features --resume --save "${tuned}")
expect_train(2 "was trained with model = tv-vgg16, but this run has model = chapter"
             --width-divisor 8 --epochs 2 --freeze-features --resume --save "${tuned}")
expect_train(0 "resuming from '[^']*tuned\\.safetensors' after epoch 1"
             --model tv-vgg16 ${small} --epochs 2 --freeze-features --resume --save "${tuned}")
# Sizes that are not instantiated for a torchvision model, and the small width for the chapter's net.
expect_train(2 "--model tv-vgg16 is not instantiated at --resize 32 --width-divisor 1; choose --resize 224 --width-divisor 1 .* or --resize 32 --width-divisor 32"
             --model tv-vgg16 --epochs 1 --save "${WORK}/r4.safetensors")
expect_train(2 "--width-divisor 32 is instantiated for the torchvision models"
             ${small} --epochs 1 --save "${WORK}/r5.safetensors")
