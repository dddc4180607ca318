// Errors that users cause (bad files, bad requests, limits that cannot be met). The CLI prints
// their message alone, without a stack trace; anything else is a bug and keeps its stack.

export class UserError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UserError';
  }
}

/** A model file that is malformed: names the file and, where known, the tensor. */
export class ModelFileError extends UserError {
  constructor(
    readonly file: string,
    message: string,
    readonly tensor?: string,
  ) {
    super(`${file}${tensor ? ` (tensor '${tensor}')` : ''}: ${message}`);
    this.name = 'ModelFileError';
  }
}
