// The `inspect` and `generate` subcommands (runtime only, no network).
#pragma once

namespace glmserve {

// Exit codes shared by every subcommand.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;   // runtime failure (I/O, internal)
inline constexpr int kExitBadInput = 2;  // bad flags/input or an unloadable checkpoint

// argv[0] is the subcommand name.
int RunInspect(int argc, char** argv);
int RunGenerate(int argc, char** argv);
// `glmserve tokenize --model DIR --text "..." [--json]`: the model directory's tokenizer.
int RunTokenize(int argc, char** argv);

}  // namespace glmserve
